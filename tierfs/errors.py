class TierfsError(Exception):
    """Base of all tierfs errors; carries the path it concerns and an errno."""
    def __init__(self, message: str, *, path: str | None = None, errno: int = 5) -> None:
        super().__init__(message)
        self.path = path
        self.errno = errno
