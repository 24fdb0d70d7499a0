"""``tierfs gui``: the login URL of the web GUI, opened in a browser where there is one."""

from __future__ import annotations

import errno
from typing import Annotated

import typer

from tierfs.control.cli.app import ConfigOption, app, config_at, err, out, user_errors


def login_url(listen: str, token: str) -> str:
    """The URL that logs a browser in: the listener's address, with the token as a query."""
    host, _, port = listen.rpartition(":")
    # A wildcard address is not one a browser can go to; this machine answers on it.
    if host in ("0.0.0.0", "", "[::]"):
        host = "127.0.0.1"
    return f"http://{host}:{port}/?token={token}"


@app.command()
@user_errors
def gui(
    config: ConfigOption = None,
    browser: Annotated[
        bool, typer.Option("--browser/--no-browser", help="Open the URL in a web browser.")
    ] = True,
) -> None:
    """Print the web GUI's login URL (it holds the token) and open it in a browser."""
    from tierfs.control.web.auth import read_token
    from tierfs.errors import ControlError

    cfg = config_at(config)
    if not cfg.web.listen:
        raise ControlError('the web GUI is off in this config ([web] listen = "")')
    path = cfg.web_token_path
    if not path.exists():
        raise ControlError(
            f"no web token at {path} yet: the daemon creates it when it starts (tierfs mount)",
            path=str(path),
            errno=errno.ENOENT,
        )
    url = login_url(cfg.web.listen, read_token(path))
    out.print(url, markup=False, soft_wrap=True)
    if browser:
        import webbrowser

        try:
            opened = webbrowser.open(url)
        except Exception:  # no browser, or one that fails: the printed URL is enough
            opened = False
        if not opened:
            err.print("(no browser found here: open the URL above in one)", markup=False)
