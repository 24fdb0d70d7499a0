"""The extended attributes a tierfs mount answers: its contract with `loader`.

Every regular file answers the first three; the mount root answers ``XATTR_STATS`` with
the daemon's read counters as JSON. Imports nothing, so the loader may import it.
"""

#: The tier or cold store serving new opens of the file.
XATTR_TIER = "user.tierfs.tier"
#: The absolute path of the copy serving new opens (readers may open it directly).
XATTR_BACKING = "user.tierfs.backing"
#: The xxh3-128 of the file's content, once known.
XATTR_XXH3 = "user.tierfs.xxh3"
XATTR_STATS = "user.tierfs.stats"
