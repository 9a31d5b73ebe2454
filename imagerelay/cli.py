"""The ``imagerelay`` command: serve, administer, simulate."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shlex
import shutil
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from imagerelay.catalog.loader import CatalogError, load_catalog
from imagerelay.config import Settings
from imagerelay.private_files import make_private_dir, write_private

app = typer.Typer(help="imagerelay: an OpenAI-compatible gateway for image generation.", no_args_is_help=True)
users_app = typer.Typer(help="Create, list, disable/enable users.", no_args_is_help=True)
tokens_app = typer.Typer(help="API tokens: create, list, update, revoke.", no_args_is_help=True)
balance_app = typer.Typer(help="Top up and adjust balances.", no_args_is_help=True)
channels_app = typer.Typer(help="Upstream channels: add, list, enable/disable, test.", no_args_is_help=True)
db_app = typer.Typer(help="Database schema: current revision, upgrade, history.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(channels_app, name="channels")
app.add_typer(users_app, name="users")
app.add_typer(users_app, name="user", help="Same as users (create, set-password, list, update).")
invite_app = typer.Typer(help="Console sign-up invitations (IMAGERELAY_SIGNUP=invite).", no_args_is_help=True)
app.add_typer(invite_app, name="invite")
app.add_typer(tokens_app, name="tokens")
app.add_typer(balance_app, name="balance")

# Piped output (scripts, tests) gets wide lines instead of Rich's 80-column default.
console = Console() if sys.stdout.isatty() else Console(width=200)
err_console = Console(stderr=True) if sys.stderr.isatty() else Console(stderr=True, width=200)

DEMO_USER = "demo"
DEMO_ADMIN = "admin"
DEMO_CREDIT_USD = Decimal("100")


def _settings(data_dir: Path | None, database_url: str | None, catalog: Path | None) -> Settings:
    overrides: dict[str, Any] = {}
    if data_dir is not None:
        overrides["data_dir"] = data_dir
    if database_url is not None:
        overrides["database_url"] = database_url
    if catalog is not None:
        overrides["catalog"] = catalog
    return Settings(**overrides)


DataDir = Annotated[Path | None, typer.Option("--data-dir", help="Data directory (env IMAGERELAY_DATA_DIR).")]
DbUrl = Annotated[str | None, typer.Option("--database-url", help="Database URL (env IMAGERELAY_DATABASE_URL).")]
CatalogOpt = Annotated[Path | None, typer.Option("--catalog", help="Catalog file (env IMAGERELAY_CATALOG).")]


def _schema_action(action: Any) -> Any:
    """Run a schema action; its refusal, or a database that cannot be reached, is one
    line on stderr and exit code 2."""
    from sqlalchemy.exc import SQLAlchemyError

    from imagerelay.storage.migrate import SchemaError

    try:
        return action()
    except SchemaError as exc:
        _fail(str(exc))
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", None) or type(exc).__name__).strip().splitlines()
        _fail(f"database error: {reason[0] if reason else type(exc).__name__}")
    except OSError as exc:  # asyncpg's refused or unreachable connection is not a DBAPI error
        why = os.strerror(exc.errno) if exc.errno else _first_line(exc) or type(exc).__name__
        _fail(f"database error: cannot connect: {why}")


def _prepare_schema(settings: Settings) -> None:
    """Create the schema in an empty database; refuse one that is behind (exit 2)."""
    from imagerelay.storage.migrate import prepare

    settings.ensure_data_dir()
    before, after = _schema_action(
        lambda: prepare(settings.resolved_database_url(), auto_upgrade=settings.auto_migrate)
    )
    if before.revision is None:
        err_console.print(f"created the database schema at revision {after.revision}", highlight=False)
    elif before.revision != after.revision:
        err_console.print(
            f"upgraded the database schema from {before.revision} to {after.revision} (IMAGERELAY_AUTO_MIGRATE)",
            highlight=False,
        )
    elif not before.stamped:
        err_console.print(
            f"recorded the database schema as revision {after.revision} (made before migrations)", highlight=False
        )


def _run(coro_fn: Any, settings: Settings) -> Any:
    """Run an async admin action against the configured database."""
    from imagerelay.services import Services

    _prepare_schema(settings)

    async def _main() -> Any:
        try:
            services = Services.build(settings)
        except CatalogError as exc:
            err_console.print(f"[red]catalog error:[/red] {exc}")
            raise typer.Exit(2) from None
        try:
            return await coro_fn(services)
        finally:
            await services.close()

    return asyncio.run(_main())


def _usd_to_micros(text: str) -> int:
    """A signed, non-zero amount typed on the command line (see ``money.parse_usd``)."""
    from imagerelay.domain.money import MoneyInputError, parse_usd

    try:
        micros = parse_usd(text, signed=True)
    except MoneyInputError as exc:
        raise typer.BadParameter(f"{text!r}: the amount {exc}") from None
    if micros == 0:
        raise typer.BadParameter("the amount must not be zero")
    return micros


async def _usable_token(services: Any, token: str) -> Any:
    """The identity of a kept demo key, or None if it may no longer act (revoked, expired,
    user disabled): the same rule as every API call (``Accounts.identify``)."""
    from imagerelay.errors import AuthenticationFailed

    try:
        return await services.accounts.identify(token, time.time())
    except AuthenticationFailed:
        return None


async def _ensure_demo(services: Any, groups: list[str]) -> tuple[dict[str, str], int]:
    """Idempotent: one demo user, one token per group, credited once (also when several
    hosts start with ``--demo`` on one database at the same time).

    Only token hashes live in the database, so the demo tokens' plain text is kept in
    ``<data_dir>/demo-tokens.json`` (mode 0600) to print the same tokens on every run.
    """
    store = services.settings.data_dir / "demo-tokens.json"
    known: dict[str, str] = {}
    if store.exists():
        try:
            known = json.loads(store.read_text())
        except ValueError:
            known = {}
    user = await services.accounts.get_or_create_user(DEMO_USER)
    tokens: dict[str, str] = {}
    for group in groups:
        token = known.get(group)
        info = await _usable_token(services, token) if token else None
        if info is None or info.group != group or info.user_id != user.id:
            token = await services.accounts.create_token(user.id, group, name=f"demo-{group}")
        tokens[group] = token  # type: ignore[assignment]
    write_private(store, json.dumps(tokens, indent=2).encode())
    if user.balance_micros == 0 and user.held_micros == 0:
        # Once per user, not once per empty balance, and once among hosts that start
        # together on one database: the key makes a second credit a no-op.
        from imagerelay.storage.billing import AdjustmentRepeated

        with contextlib.suppress(AdjustmentRepeated):
            await services.billing.adjust(
                user.id, int(DEMO_CREDIT_USD * 1_000_000), "demo credit", kind="topup", once=f"demo-credit-{user.id}"
            )
    now = await services.accounts.get_user(user.id)
    return tokens, now.available_micros


async def _ensure_demo_console(services: Any) -> dict[str, dict[str, str]]:
    """Console passwords for a demo admin and the demo user, kept (0600) in
    ``<data_dir>/demo-console.json`` so every run prints the same ones."""
    import secrets

    from imagerelay.console.accounts import set_password

    store = services.settings.data_dir / "demo-console.json"
    known: dict[str, Any] = {}
    if store.exists():
        try:
            known = json.loads(store.read_text())
        except ValueError:
            known = {}
    logins = services.logins
    out: dict[str, dict[str, str]] = {}
    for role, name, admin in (("admin", DEMO_ADMIN, True), ("user", DEMO_USER, False)):
        user = await services.accounts.get_or_create_user(name, is_admin=admin)
        password = (known.get(role) or {}).get("password")
        if not (
            isinstance(password, str) and await services.passwords.verify(password, await logins.password_hash(user.id))
        ):
            password = secrets.token_urlsafe(12)
            await set_password(services, logins, user.id, name, password)
        out[role] = {"name": name, "password": password}
    write_private(store, json.dumps(out, indent=2).encode())
    return out


def _curl_example(base: str, group: str, token: str, catalog: Any) -> str:
    from imagerelay.domain.capabilities import example_body

    models = catalog.models_by_group.get(group, ())
    model = models[0] if models else "gpt-image-2"
    route = catalog.route(group, model)
    body = example_body(route) if route is not None else {"model": model, "prompt": "a white ceramic mug"}
    return (
        f"curl {base}/v1/images/generations -H 'Authorization: Bearer {token}' "
        f"-H 'Content-Type: application/json' -d {shlex.quote(json.dumps(body))}"
    )


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8080,
    workers: Annotated[int, typer.Option(help="Worker processes (multi-core).")] = 1,
    demo: Annotated[
        bool, typer.Option("--demo", help="Create a demo user with one token per group and print them.")
    ] = False,
    demo_tokens_out: Annotated[
        Path | None, typer.Option("--demo-tokens-out", help="Also write the demo tokens as JSON.")
    ] = None,
    demo_console_out: Annotated[
        Path | None, typer.Option("--demo-console-out", help="Also write the demo console credentials as JSON.")
    ] = None,
    data_dir: DataDir = None,
    database_url: DbUrl = None,
    catalog: CatalogOpt = None,
) -> None:
    """Run the gateway."""
    import uvicorn

    settings = _settings(data_dir, database_url, catalog)
    try:
        cat = load_catalog(settings.catalog)
    except CatalogError as exc:
        err_console.print(f"[red]catalog error:[/red] {exc}")
        raise typer.Exit(2) from None
    # Here, once, before any worker process starts: a refusal is one line, not N.
    _prepare_schema(settings)
    _check_pools_at_start(cat, settings, demo)
    if demo:
        from imagerelay.domain.money import format_usd

        async def demo_accounts(s: Any) -> tuple[dict[str, str], int, dict[str, dict[str, str]]]:
            tokens, available = await _ensure_demo(s, list(cat.groups))
            return tokens, available, (await _ensure_demo_console(s) if settings.console else {})

        tokens, available, creds = _run(demo_accounts, settings)
        base = f"http://{host}:{port}"
        # The real balance: the demo credit is given once, and a reused data dir has spent some.
        console.print(f"[bold]Demo tokens[/bold] (user {DEMO_USER!r}, {format_usd(available)} available):")
        for group, token in tokens.items():
            console.print(f"  [cyan]{group}[/cyan]: {token}")
            console.print(f"    {_curl_example(base, group, token, cat)}", soft_wrap=True)
        if demo_tokens_out is not None:
            write_private(demo_tokens_out, json.dumps(tokens, indent=2).encode())
        if creds:
            prefix = settings.root_path.rstrip("/")
            console.print(
                f"[bold]Console[/bold]: {base}{prefix}/console/ "
                f"(admin: {creds['admin']['name']} / {creds['admin']['password']}; "
                f"user: {creds['user']['name']} / {creds['user']['password']})",
                soft_wrap=True,
            )
            if demo_console_out is not None:
                write_private(demo_console_out, json.dumps(creds, indent=2).encode())
            if settings.signup is None:  # a demo takes sign-ups unless told otherwise
                os.environ["IMAGERELAY_SIGNUP"] = "open"
    # Worker processes rebuild settings from the environment: pass ours down.
    os.environ["IMAGERELAY_DATA_DIR"] = str(settings.data_dir.resolve())
    if settings.database_url:
        os.environ["IMAGERELAY_DATABASE_URL"] = settings.database_url
    if settings.catalog:
        os.environ["IMAGERELAY_CATALOG"] = str(Path(settings.catalog).resolve())
    if workers > 1:
        _share_metrics(settings)
    from imagerelay.api.connections import GuardedHttpToolsProtocol

    _raise_descriptor_limit()
    _warn_if_descriptors_short(settings.max_connections)
    console.print(f"imagerelay listening on http://{host}:{port}/v1", highlight=False)
    sys.stdout.flush()
    uvicorn.run(
        "imagerelay.api.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        loop="auto",
        # httptools with a head timeout, a head size limit and a connection cap
        # (IMAGERELAY_HEADER_TIMEOUT_S, IMAGERELAY_MAX_CONNECTIONS): see api/connections.py.
        http=GuardedHttpToolsProtocol,
        log_level=settings.log_level,
        access_log=False,
        # Console behind a proxy: its path prefix, and whose X-Forwarded-* headers count.
        root_path=settings.root_path.rstrip("/"),
        proxy_headers=True,
        forwarded_allow_ips=settings.forwarded_allow_ips,
        # uvicorn's default accept queue (2048) overflows when thousands of clients
        # connect at once, and a dropped SYN costs its client a 1-3 s retransmit; the
        # kernel caps this at net.core.somaxconn.
        backlog=max(2048, settings.max_connections),
    )


def _share_metrics(settings: Settings) -> None:
    """Workers share one socket, so a scrape reaches any one of them: let each write its
    metrics to files that every scrape sums (prometheus-client multiprocess mode). The
    directory is emptied first (the documented requirement: stale files would be summed)."""
    from imagerelay.metrics import MULTIPROC_ENV

    if os.environ.get(MULTIPROC_ENV):
        return  # the operator's own directory, managed by them
    directory = settings.data_dir.resolve() / "metrics"
    shutil.rmtree(directory, ignore_errors=True)
    make_private_dir(directory)
    os.environ[MULTIPROC_ENV] = str(directory)


def _raise_descriptor_limit() -> None:
    """Raise the soft file-descriptor limit to the hard one (as Go's runtime does at
    start): every call in flight holds a client socket and an upstream socket, and the
    usual soft default (1024) caps a worker at about 500 calls in flight."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _warn_if_descriptors_short(max_connections: int) -> None:
    """The connection cap only protects the process if descriptors remain for upstream
    sockets, the database and image files after it is reached."""
    import resource

    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and max_connections > soft - 256:
        err_console.print(
            f"[yellow]warning:[/yellow] IMAGERELAY_MAX_CONNECTIONS={max_connections} leaves too few of the "
            f"{soft} file descriptors (ulimit -n) for upstreams and files; lower it or raise the limit."
        )


@users_app.command("create")
def users_create(
    name: str,
    admin: Annotated[bool, typer.Option("--admin", help="Make the user an administrator.")] = False,
    data_dir: DataDir = None,
    database_url: DbUrl = None,
) -> None:
    """Create a user (idempotent)."""
    user = _run(lambda s: s.accounts.get_or_create_user(name, is_admin=admin), _settings(data_dir, database_url, None))
    console.print(f"user {user.name} (id {user.id})")


def _read_password(confirm: bool = True) -> str:
    """A password from the terminal (asked twice) or one line of standard input; never argv."""
    if sys.stdin.isatty():
        import getpass

        first = getpass.getpass("New password: ")
        if confirm and getpass.getpass("Again: ") != first:
            _fail("the two passwords differ")
        return first
    return sys.stdin.readline().rstrip("\r\n")


@users_app.command("set-password")
def users_set_password(
    name: str,
    data_dir: DataDir = None,
    database_url: DbUrl = None,
) -> None:
    """Set a user's console password (asked at the terminal, or one line on stdin).
    Every console session of the user ends."""
    from imagerelay.console.accounts import set_password

    password = _read_password()

    async def action(s: Any) -> str | None:
        user = await s.accounts.find_user(name)
        if user is None:
            return f"no user {name!r}; create it with: imagerelay user create {name}"
        try:
            await set_password(s, s.logins, user.id, user.name, password)
        except ValueError as exc:
            return str(exc)
        return None

    problem = _run(action, _settings(data_dir, database_url, None))
    if problem:
        _fail(problem)
    console.print(f"password set for {name}; sign in at /console/signin")


@invite_app.command("create")
def invite_create(
    days: Annotated[float, typer.Option("--days", help="Days the code stays valid (0: no expiry).")] = 7,
    note: Annotated[str, typer.Option("--note", help="Who it is for (kept with the code).")] = "",
    data_dir: DataDir = None,
    database_url: DbUrl = None,
) -> None:
    """Create a one-use sign-up code (print it once; only its hash is kept)."""
    if days < 0:
        raise typer.BadParameter("--days must be 0 or more")
    code = _run(
        lambda s: s.logins.create_invite(None, ttl_s=days * 86400 or None, note=note[:500]),
        _settings(data_dir, database_url, None),
    )
    console.print(code, highlight=False)
    err_console.print(
        "Give it to the new user: sign up at /console/signup?invite=<code> (IMAGERELAY_SIGNUP=invite).", highlight=False
    )


@users_app.command("list")
def users_list(data_dir: DataDir = None, database_url: DbUrl = None) -> None:
    """List users with their balances."""
    users = _run(lambda s: s.accounts.list_users(), _settings(data_dir, database_url, None))
    table = Table("id", "name", "admin", "disabled", "token groups", "balance (USD)", "held (USD)")
    for u in users:
        groups = ",".join(u.allowed_groups) if u.allowed_groups is not None else "(its tokens' groups)"
        table.add_row(
            str(u.id),
            u.name,
            "yes" if u.is_admin else "",
            "yes" if u.disabled else "",
            groups,
            f"{Decimal(u.balance_micros) / 1_000_000:.6f}",
            f"{Decimal(u.held_micros) / 1_000_000:.6f}",
        )
    console.print(table)


def _fail(message: str, code: int = 2) -> NoReturn:
    """One red line on stderr, then exit ``code``."""
    from rich.markup import escape

    err_console.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _expiry(text: str | None) -> float | None | str:
    """``--expires-at``: a unix time, an ISO 8601 date-time (UTC if no offset), or ``never``."""
    if text is None:
        return "unchanged"
    if text == "never":
        return None
    try:
        return float(text) if text.replace(".", "", 1).isdigit() else _iso(text)
    except ValueError:
        raise typer.BadParameter(f"{text!r}: a unix time, an ISO 8601 date-time, or never") from None


def _iso(text: str) -> float:
    from datetime import UTC, datetime

    moment = datetime.fromisoformat(text)
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def _token_body(
    name: str | None,
    rpm: int | None,
    concurrency: int | None,
    spend_cap: str | None,
    models: list[str] | None,
    expires_at: str | None,
    clear: list[str],
) -> dict[str, Any]:
    """CLI options as the API's fields, so the one rule (domain.accountrules) reads both."""
    body: dict[str, Any] = {
        "rpm": rpm,
        "concurrency": concurrency,
        "spend_cap_usd": spend_cap,
        "allowed_models": models or None,
        "name": name,
    }
    body = {k: v for k, v in body.items() if v is not None}
    expiry = _expiry(expires_at)
    if expiry != "unchanged":
        body["expires_at"] = expiry
    for field in clear:
        if field not in ("rpm", "concurrency", "spend_cap_usd", "allowed_models", "expires_at"):
            raise typer.BadParameter(
                f"--clear {field!r}: one of rpm, concurrency, spend_cap_usd, allowed_models, expires_at"
            )
        body[field] = None
    return body


def _changes(body: dict[str, Any], models: Any) -> dict[str, object]:
    from imagerelay.domain.accountrules import token_changes
    from imagerelay.errors import ApiError

    try:
        return token_changes(body, models=models)
    except ApiError as exc:
        _fail(f"{exc.param or 'token'}: {exc.message}")


RpmOpt = Annotated[int | None, typer.Option("--rpm", help="Requests per minute.")]
ConcurrencyOpt = Annotated[int | None, typer.Option("--concurrency", help="Calls at once.")]
SpendCapOpt = Annotated[str | None, typer.Option("--spend-cap", help="USD this key may spend, e.g. 25.50.")]
ModelsOpt = Annotated[list[str] | None, typer.Option("--allowed-model", help="A model the key may call (repeat).")]
ExpiresOpt = Annotated[str | None, typer.Option("--expires-at", help="Unix time, ISO 8601 (UTC), or never.")]


@tokens_app.command("create")
def tokens_create(
    user: Annotated[str, typer.Option("--user", help="User name (created if missing).")],
    group: Annotated[str, typer.Option("--group", help="Token group, e.g. default, Sora2Official.")],
    name: Annotated[str, typer.Option("--name", help="A label for the token.")] = "default",
    rpm: RpmOpt = None,
    concurrency: ConcurrencyOpt = None,
    spend_cap: SpendCapOpt = None,
    allowed_model: ModelsOpt = None,
    expires_at: ExpiresOpt = None,
    data_dir: DataDir = None,
    database_url: DbUrl = None,
    catalog: CatalogOpt = None,
) -> None:
    """Create an API token in a group, with optional limits; prints it once (only its hash is stored)."""
    from imagerelay.domain.accounts import TokenLimits

    settings = _settings(data_dir, database_url, catalog)
    cat = load_catalog(settings.catalog)
    if group not in cat.groups:
        err_console.print(f"[red]unknown group {group!r}[/red]; groups: {', '.join(cat.groups)}")
        raise typer.Exit(2)
    changes = _changes(
        _token_body(name, rpm, concurrency, spend_cap, allowed_model, expires_at, []),
        cat.models_by_group.get(group, ()),
    )

    async def _create(s: Any) -> str:
        u = await s.accounts.get_or_create_user(user)
        limits = TokenLimits(
            spend_cap_micros=changes.get("spend_cap_micros"),  # type: ignore[arg-type]
            allowed_models=changes.get("allowed_models"),  # type: ignore[arg-type]
            rpm_limit=changes.get("rpm_limit"),  # type: ignore[arg-type]
            concurrency_limit=changes.get("concurrency_limit"),  # type: ignore[arg-type]
        )
        return await s.accounts.create_token(  # type: ignore[no-any-return]
            u.id,
            group,
            name=str(changes["name"]),
            expires_at=changes.get("expires_at"),
            limits=limits,
        )

    print(_run(_create, settings))


@tokens_app.command("list")
def tokens_list(
    user: Annotated[str | None, typer.Option("--user", help="Only this user's tokens.")] = None,
    group: Annotated[str | None, typer.Option("--group")] = None,
    status: Annotated[str | None, typer.Option("--status", help="active | revoked | expired")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="The API's JSON instead of a table.")] = False,
    data_dir: DataDir = None,
    database_url: DbUrl = None,
) -> None:
    """List tokens (never their secret: a hint such as sk-abcd…wxyz to recognise one)."""
    import time

    from imagerelay.api.account.keys import token_json
    from imagerelay.domain.accounts import TOKEN_STATUSES, TokenFilter

    if status is not None and status not in TOKEN_STATUSES:
        raise typer.BadParameter(f"--status: one of {', '.join(TOKEN_STATUSES)}")

    async def _list(s: Any) -> list[dict[str, Any]]:
        user_id = None
        if user is not None:
            u = await s.accounts.find_user(user)
            if u is None:
                _fail(f"no user {user!r}")
            user_id = u.id
        views, _more = await s.accounts.list_tokens(
            TokenFilter(user_id=user_id, group=group, status=status, limit=100_000)
        )
        return [token_json(v, time.time()) for v in views]

    rows = _run(_list, _settings(data_dir, database_url, None))
    if as_json:
        print(json.dumps(rows, indent=2, ensure_ascii=False))
        return
    table = Table(
        "id", "user", "name", "group", "key", "status", "rpm", "conc.", "spend cap", "spent", "models", "expires at"
    )
    for t in rows:
        lim = t["limits"]
        table.add_row(
            str(t["id"]),
            t["user"],
            t["name"],
            t["group"],
            t["key_hint"],
            t["status"],
            str(lim["rpm"] or ""),
            str(lim["concurrency"] or ""),
            lim["spend_cap_usd"] or "",
            t["spent_usd"],
            ",".join(lim["allowed_models"] or []),
            str(int(t["expires_at"])) if t["expires_at"] else "",
        )
    console.print(table)


def _existing_token(s: Any, token_id: int) -> Any:
    async def _get() -> Any:
        view = await s.accounts.view_token(token_id)
        if view is None:
            _fail(f"no token {token_id}")
        return view

    return _get()


@tokens_app.command("update")
def tokens_update(
    token_id: Annotated[int, typer.Argument(help="The token's id (tokens list).")],
    name: Annotated[str | None, typer.Option("--name")] = None,
    rpm: RpmOpt = None,
    concurrency: ConcurrencyOpt = None,
    spend_cap: SpendCapOpt = None,
    allowed_model: ModelsOpt = None,
    expires_at: ExpiresOpt = None,
    clear: Annotated[
        list[str],
        typer.Option(
            "--clear", help="Remove a limit: rpm, concurrency, spend_cap_usd, allowed_models, expires_at (repeat)."
        ),
    ] = [],  # noqa: B006
    data_dir: DataDir = None,
    database_url: DbUrl = None,
    catalog: CatalogOpt = None,
) -> None:
    """Rename a token or change its limits (a running gateway applies it within one token-cache TTL)."""
    settings = _settings(data_dir, database_url, catalog)
    cat = load_catalog(settings.catalog)
    body = _token_body(name, rpm, concurrency, spend_cap, allowed_model, expires_at, clear)
    if not body:
        _fail("nothing to change; see --help")

    async def _update(s: Any) -> None:
        view = await _existing_token(s, token_id)
        await s.accounts.update_token(token_id, _changes(body, cat.models_by_group.get(view.group, ())))

    _run(_update, settings)
    console.print(f"token {token_id} updated")


@tokens_app.command("revoke")
def tokens_revoke(
    token_id: Annotated[int, typer.Argument(help="The token's id (tokens list).")],
    data_dir: DataDir = None,
    database_url: DbUrl = None,
) -> None:
    """Revoke a token: refused by every gateway process within one token-cache TTL."""

    async def _revoke(s: Any) -> None:
        await _existing_token(s, token_id)
        await s.accounts.revoke_token(token_id)

    _run(_revoke, _settings(data_dir, database_url, None))
    console.print(f"token {token_id} revoked")


@users_app.command("update")
def users_update(
    name: str,
    disabled: Annotated[
        bool | None, typer.Option("--disable/--enable", help="Refuse (or accept again) every token of the user.")
    ] = None,
    admin: Annotated[bool | None, typer.Option("--admin/--no-admin")] = None,
    group: Annotated[
        list[str] | None,
        typer.Option("--group", help="A group the user may create tokens in (repeat; replaces the list)."),
    ] = None,
    default_groups: Annotated[
        bool, typer.Option("--default-groups", help="Reset to the groups of the user's tokens.")
    ] = False,
    data_dir: DataDir = None,
    database_url: DbUrl = None,
    catalog: CatalogOpt = None,
) -> None:
    """Disable or enable a user, set the admin flag, or the groups they may create tokens in."""
    from imagerelay.domain.accountrules import user_changes
    from imagerelay.errors import ApiError

    settings = _settings(data_dir, database_url, catalog)
    cat = load_catalog(settings.catalog)
    body: dict[str, Any] = {
        k: v for k, v in (("disabled", disabled), ("is_admin", admin), ("allowed_groups", group)) if v is not None
    }
    if default_groups:
        body["allowed_groups"] = None
    if not body:
        _fail("nothing to change; see --help")
    try:
        changes = user_changes(body, groups=list(cat.groups))
    except ApiError as exc:
        _fail(f"{exc.param}: {exc.message}")

    async def _update(s: Any) -> None:
        u = await s.accounts.find_user(name)
        if u is None:
            _fail(f"no user {name!r}")
        await s.accounts.update_user(u.id, changes)

    _run(_update, settings)
    console.print(f"user {name} updated")


@balance_app.command("add")
def balance_add(
    user: Annotated[str, typer.Option("--user")],
    amount: Annotated[str, typer.Option("--amount", help="USD, exact (e.g. 10 or -0.5).")],
    reason: Annotated[str, typer.Option("--reason", help="Why; recorded in the ledger.")],
    data_dir: DataDir = None,
    database_url: DbUrl = None,
) -> None:
    """Top up (or, with a negative amount, adjust) a user's balance."""
    from imagerelay.domain.money import format_usd
    from imagerelay.storage.billing import AdjustmentRefused

    micros = _usd_to_micros(amount)

    async def _add(s: Any) -> int:
        u = await s.accounts.find_user(user)
        if u is None:
            err_console.print(f"[red]no user {user!r}[/red]")
            raise typer.Exit(2)
        try:
            return await s.billing.adjust(u.id, micros, reason, kind="topup" if micros > 0 else "adjust")  # type: ignore[no-any-return]
        except AdjustmentRefused as refused:
            why = "a debit cannot take it below zero" if micros < 0 else "the balance would pass its maximum"
            err_console.print(
                f"[red]refused:[/red] {user}'s available balance is {format_usd(refused.available_micros)}; {why}"
            )
            raise typer.Exit(2) from None

    balance = _run(_add, _settings(data_dir, database_url, None))
    console.print(f"{user}: balance ${Decimal(balance) / 1_000_000:.6f}")


@channels_app.command("add")
def channels_add(
    name: Annotated[str, typer.Option("--name")],
    type: Annotated[str, typer.Option("--type", help="openai | azure | openai-compatible | simulator")],
    pools: Annotated[list[str], typer.Option("--pool", help="Pool(s) this channel serves (repeat).")],
    base_url: Annotated[str | None, typer.Option("--base-url")] = None,
    key_stdin: Annotated[bool, typer.Option("--key-stdin", help="Read the upstream key from standard input.")] = False,
    api_version: Annotated[str | None, typer.Option("--api-version")] = None,
    azure_form: Annotated[str, typer.Option("--azure-form", help="deployment | v1")] = "deployment",
    model_map: Annotated[list[str], typer.Option("--model-map", help="FROM=TO, e.g. gpt-image-2=my-deployment")] = [],  # noqa: B006
    priority: Annotated[int, typer.Option("--priority")] = 0,
    weight: Annotated[int, typer.Option("--weight")] = 1,
    timeout_s: Annotated[float, typer.Option("--timeout")] = 180.0,
    proxy: Annotated[
        str | None, typer.Option("--proxy", help="http://, https:// or socks5:// proxy for this channel.")
    ] = None,
    ca_bundle: Annotated[
        str | None, typer.Option("--ca-bundle", help="PEM file of CAs to trust for this upstream.")
    ] = None,
    verify: Annotated[bool, typer.Option("--verify/--no-verify", help="Verify the upstream's certificate.")] = True,
    data_dir: DataDir = None,
    database_url: DbUrl = None,
) -> None:
    """Add a channel; its key is stored encrypted (read it with --key-stdin, never as an argument)."""
    from pydantic import ValidationError

    from imagerelay.catalog.model import ChannelSpec

    key = sys.stdin.readline().strip() if key_stdin else None
    try:
        mapping = _model_map(model_map)
        spec = ChannelSpec(
            name=name,
            type=type,  # type: ignore[arg-type]
            pools=tuple(pools),
            base_url=base_url,
            api_version=api_version,
            azure_form=azure_form,  # type: ignore[arg-type]
            model_map=mapping,
            priority=priority,
            weight=weight,
            timeout_s=timeout_s,
            proxy=proxy,
            ca_bundle=ca_bundle,
            verify=verify,
        )
    except (ValueError, ValidationError) as exc:
        err_console.print(f"[red]invalid channel:[/red] {exc}")
        raise typer.Exit(2) from None

    async def _add(s: Any) -> None:
        from imagerelay.storage.channels import ChannelInvalid

        try:
            await s.directory.add(spec, key)
        except ChannelInvalid as exc:
            err_console.print(f"[red]invalid channel:[/red] {exc}")
            raise typer.Exit(2) from None

    _run(_add, _settings(data_dir, database_url, None))
    console.print(
        f"channel {name} added ({type}, pools {', '.join(pools)}, key {'stored encrypted' if key else 'none'})"
    )


@channels_app.command("list")
def channels_list(data_dir: DataDir = None, database_url: DbUrl = None) -> None:
    """List channels (never their keys)."""

    async def _list(s: Any) -> Any:
        await s.directory.load()
        return s.directory.views()

    table = Table("name", "type", "pools", "priority", "weight", "enabled", "source", "key", "disabled reason")
    for v in _run(_list, _settings(data_dir, database_url, None)):
        table.add_row(
            v.spec.name,
            v.spec.type,
            ",".join(v.spec.pools),
            str(v.spec.priority),
            str(v.spec.weight),
            "yes" if v.spec.enabled else "no",
            v.source,
            "set" if v.has_key else "-",
            v.disabled_reason or "",
        )
    console.print(table)


@channels_app.command("update")
def channels_update(
    name: str,
    pools: Annotated[list[str] | None, typer.Option("--pool", help="Replace the pools (repeat).")] = None,
    base_url: Annotated[str | None, typer.Option("--base-url")] = None,
    key_stdin: Annotated[bool, typer.Option("--key-stdin", help="Replace the key with one read from stdin.")] = False,
    clear_key: Annotated[bool, typer.Option("--clear-key", help="Remove the stored key.")] = False,
    api_version: Annotated[str | None, typer.Option("--api-version")] = None,
    azure_form: Annotated[str | None, typer.Option("--azure-form", help="deployment | v1")] = None,
    model_map: Annotated[
        list[str] | None, typer.Option("--model-map", help="Replace the map: FROM=TO (repeat).")
    ] = None,
    priority: Annotated[int | None, typer.Option("--priority")] = None,
    weight: Annotated[int | None, typer.Option("--weight")] = None,
    timeout_s: Annotated[float | None, typer.Option("--timeout")] = None,
    proxy: Annotated[
        str | None, typer.Option("--proxy", help="http://, https:// or socks5:// proxy for this channel.")
    ] = None,
    ca_bundle: Annotated[
        str | None, typer.Option("--ca-bundle", help="PEM file of CAs to trust for this upstream.")
    ] = None,
    verify: Annotated[
        bool | None, typer.Option("--verify/--no-verify", help="Verify the upstream's certificate.")
    ] = None,
    data_dir: DataDir = None,
    database_url: DbUrl = None,
) -> None:
    """Change a channel added at run time; fields not given keep their value. Running
    gateways follow within the channel reload interval (10 s)."""
    if key_stdin and clear_key:
        raise typer.BadParameter("give --key-stdin or --clear-key, not both")
    changes: dict[str, Any] = {
        field: value
        for field, value in (
            ("pools", pools),
            ("base_url", base_url),
            ("api_version", api_version),
            ("azure_form", azure_form),
            ("model_map", None if model_map is None else _model_map(model_map)),
            ("priority", priority),
            ("weight", weight),
            ("timeout_s", timeout_s),
            ("proxy", proxy),
            ("ca_bundle", ca_bundle),
            ("verify", verify),
        )
        if value is not None
    }
    key = sys.stdin.readline().strip() if key_stdin else None
    if not changes and not (key_stdin or clear_key):
        raise typer.BadParameter("nothing to change: give at least one field")

    async def _update(s: Any) -> None:
        from imagerelay.storage.channels import ChannelConflict, ChannelInvalid

        try:
            await s.directory.update(name, changes, set_key=key_stdin or clear_key, api_key=key)
        except KeyError:
            _fail(f"no channel {name!r}")
        except (ChannelInvalid, ChannelConflict) as exc:
            _fail(f"invalid channel: {exc}" if isinstance(exc, ChannelInvalid) else str(exc))

    _run(_update, _settings(data_dir, database_url, None))
    what = ", ".join([*changes, *(["key"] if key_stdin or clear_key else [])])
    console.print(f"channel {name} updated ({what})", highlight=False)


@channels_app.command("remove")
def channels_remove(name: str, data_dir: DataDir = None, database_url: DbUrl = None) -> None:
    """Remove a channel added at run time (catalog channels are removed from the file).
    Running gateways stop using it within the channel reload interval (10 s)."""

    async def _remove(s: Any) -> None:
        from imagerelay.storage.channels import ChannelConflict

        try:
            await s.directory.remove(name)
        except KeyError:
            _fail(f"no channel {name!r}")
        except ChannelConflict as exc:
            _fail(str(exc))

    _run(_remove, _settings(data_dir, database_url, None))
    console.print(f"channel {name} removed", highlight=False)


def _model_map(items: list[str]) -> dict[str, str]:
    pairs = [item.partition("=") for item in items]
    bad = [item for item, (_src, sep, dst) in zip(items, pairs, strict=True) if not sep or not dst]
    if bad:
        raise typer.BadParameter(f"--model-map {bad[0]!r}: use FROM=TO, e.g. gpt-image-2=my-deployment")
    return {src: dst for src, _sep, dst in pairs}


def _set_enabled(name: str, enabled: bool, data_dir: Path | None, database_url: str | None) -> None:
    async def _set(s: Any) -> None:
        await s.directory.load()
        try:
            await s.directory.set_enabled(name, enabled, None if enabled else "disabled by an administrator (CLI)")
        except KeyError:
            err_console.print(f"[red]no channel {name!r}[/red]")
            raise typer.Exit(2) from None

    _run(_set, _settings(data_dir, database_url, None))
    console.print(f"channel {name} {'enabled' if enabled else 'disabled'}")


@channels_app.command("enable")
def channels_enable(name: str, data_dir: DataDir = None, database_url: DbUrl = None) -> None:
    """Enable a channel (also clears a disable after a rejected key)."""
    _set_enabled(name, True, data_dir, database_url)


@channels_app.command("disable")
def channels_disable(name: str, data_dir: DataDir = None, database_url: DbUrl = None) -> None:
    """Disable a channel."""
    _set_enabled(name, False, data_dir, database_url)


@channels_app.command("test")
def channels_test(
    name: str,
    url: Annotated[str, typer.Option("--url", help="Gateway base URL.")] = "http://127.0.0.1:8080",
    admin_token: Annotated[str | None, typer.Option("--admin-token", envvar="IMAGERELAY_ADMIN_TOKEN")] = None,
) -> None:
    """Ask a running gateway to test a channel with one small real call."""
    import httpx

    if not admin_token:
        err_console.print("[red]--admin-token or IMAGERELAY_ADMIN_TOKEN is required[/red]")
        raise typer.Exit(2)
    resp = httpx.post(
        f"{url.rstrip('/')}/admin/channels/{name}/test", headers={"Authorization": f"Bearer {admin_token}"}, timeout=300
    )
    body = _json_answer(resp)
    if resp.status_code != 200:
        _fail(f"{resp.status_code}: {body.get('error', {}).get('message') or resp.reason_phrase}", 1)
    if body.get("ok"):
        console.print(f"channel {name}: ok, one image in {body.get('latency_ms')} ms", highlight=False)
        return
    _fail(f"channel {name}: failed after {body.get('latency_ms')} ms: {body.get('error')}", 1)


def _json_answer(resp: Any) -> dict[str, Any]:
    """The gateway's JSON object, or one line saying the URL is not a gateway."""
    try:
        body = resp.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        _fail(f"{resp.request.url} answered {resp.status_code} without a JSON object; is --url a gateway?", 1)
    return body


@app.command()
def audit(data_dir: DataDir = None, database_url: DbUrl = None) -> None:
    """Check every money invariant; exits 1 on a violation."""
    problems = _run(lambda s: s.billing.audit(), _settings(data_dir, database_url, None))
    if problems:
        for p in problems:
            err_console.print(f"[red]✗[/red] {p}")
        raise typer.Exit(1)
    console.print("[green]✓[/green] balances equal ledgers, holds are current, usage records match charges")


@app.command()
def purge(data_dir: DataDir = None, database_url: DbUrl = None) -> None:
    """Delete now what has outlived its lifetime: image files, expired jobs and job inputs
    (a running gateway does this every minute; run it with the gateway's settings)."""

    async def _purge(s: Any) -> int:
        removed: int = await s.store.purge_expired()
        await s.jobs.purge_expired()
        return removed

    removed = _run(_purge, _settings(data_dir, database_url, None))
    console.print(f"[green]✓[/green] removed {removed} expired stored image(s); expired jobs purged")


@db_app.command("current")
def db_current(data_dir: DataDir = None, database_url: DbUrl = None) -> None:
    """Print the database's schema revision; exits 1 unless it is this release's (head)."""
    from imagerelay.storage.migrate import state

    settings = _settings(data_dir, database_url, None)
    current = _schema_action(lambda: state(settings.resolved_database_url()))
    console.print(current.describe(), highlight=False)
    if not current.at_head:
        raise typer.Exit(1)


@db_app.command("upgrade")
def db_upgrade(
    to: Annotated[str, typer.Option("--to", help="Target revision (default: this release's head).")] = "head",
    data_dir: DataDir = None,
    database_url: DbUrl = None,
) -> None:
    """Upgrade the database schema (creating it in an empty database). Back the database up first."""
    from imagerelay.storage.migrate import upgrade

    settings = _settings(data_dir, database_url, None)
    settings.ensure_data_dir()
    before, after = _schema_action(lambda: upgrade(settings.resolved_database_url(), to))
    if before.revision == after.revision and before.stamped:
        console.print(f"already at {after.describe()}", highlight=False)
    else:
        console.print(f"upgraded from {before.revision or 'an empty database'} to {after.describe()}", highlight=False)


@db_app.command("history")
def db_history() -> None:
    """List this release's schema revisions, oldest first."""
    from imagerelay.storage.migrate import history

    for revision, description in history():
        console.print(f"{revision}  {description}", highlight=False)


@db_app.command("revision")
def db_revision(message: Annotated[str, typer.Option("--message", "-m", help="What the migration changes.")]) -> None:
    """(Developers) write the migration from the head revision to the models in schema.py."""
    from imagerelay.storage.migrate import new_revision

    path = _schema_action(lambda: new_revision(message))
    console.print(
        f"wrote {path}; review it (docs/migrations.md), then run ./scripts/test tests/e2e/test_migrations.py",
        highlight=False,
    )


def _client_headers(key: str | None) -> dict[str, str]:
    if not key:
        err_console.print("[red]--key or IMAGERELAY_API_KEY is required[/red]")
        raise typer.Exit(2)
    return {"Authorization": f"Bearer {key}"}


def _save_images(body: dict[str, Any], out: Path) -> None:
    import base64

    import httpx

    data = body.get("data") or []
    for i, item in enumerate(data):
        target = out if len(data) == 1 else out.with_name(f"{out.stem}-{i}{out.suffix}")
        if item.get("b64_json"):
            target.write_bytes(base64.b64decode(item["b64_json"]))
        elif item.get("url"):
            target.write_bytes(httpx.get(item["url"], timeout=120).content)
        console.print(f"saved {target}")
    if body.get("usage"):
        console.print(f"usage: {body['usage']}")


def _client_call(method_url: str, key: str | None, **kwargs: Any) -> dict[str, Any]:
    import httpx

    resp = httpx.post(method_url, headers=_client_headers(key), timeout=600, **kwargs)
    body = _json_answer(resp)
    if resp.status_code != 200:
        err = body.get("error", {})
        err_console.print(f"[red]{resp.status_code} {err.get('code')}[/red]: {err.get('message')}")
        raise typer.Exit(1)
    return body


BaseUrlOpt = Annotated[str, typer.Option("--base-url", envvar="IMAGERELAY_BASE_URL", help="Gateway /v1 URL.")]
KeyOpt = Annotated[str | None, typer.Option("--key", envvar="IMAGERELAY_API_KEY", help="API token.")]


@app.command()
def generate(
    prompt: str,
    model: Annotated[str, typer.Option("--model")] = "gpt-image-2",
    size: Annotated[str | None, typer.Option("--size")] = None,
    quality: Annotated[str | None, typer.Option("--quality")] = None,
    n: Annotated[int | None, typer.Option("--n")] = None,
    output_format: Annotated[str | None, typer.Option("--format")] = None,
    out: Annotated[Path, typer.Option("--out", "-o")] = Path("image.png"),
    base_url: BaseUrlOpt = "http://127.0.0.1:8080/v1",
    key: KeyOpt = None,
) -> None:
    """Client: generate an image through a gateway and save it."""
    body: dict[str, Any] = {"model": model, "prompt": prompt}
    for name, value in (("size", size), ("quality", quality), ("n", n), ("output_format", output_format)):
        if value is not None:
            body[name] = value
    _save_images(_client_call(f"{base_url.rstrip('/')}/images/generations", key, json=body), out)


@app.command()
def edit(
    prompt: str,
    image: Annotated[list[Path], typer.Option("--image", help="Input image (repeat for several).")],
    model: Annotated[str, typer.Option("--model")] = "gpt-image-2",
    mask: Annotated[Path | None, typer.Option("--mask")] = None,
    size: Annotated[str | None, typer.Option("--size")] = None,
    quality: Annotated[str | None, typer.Option("--quality")] = None,
    out: Annotated[Path, typer.Option("--out", "-o")] = Path("edited.png"),
    base_url: BaseUrlOpt = "http://127.0.0.1:8080/v1",
    key: KeyOpt = None,
) -> None:
    """Client: edit image(s) through a gateway and save the result."""
    fields = {"model": model, "prompt": prompt}
    if size:
        fields["size"] = size
    if quality:
        fields["quality"] = quality
    part = "image" if len(image) == 1 else "image[]"
    files = [(part, (p.name, p.read_bytes())) for p in image]
    if mask is not None:
        files.append(("mask", (mask.name, mask.read_bytes())))
    _save_images(_client_call(f"{base_url.rstrip('/')}/images/edits", key, data=fields, files=files), out)


@app.command("simulate-upstream")
def simulate_upstream(
    protocol: Annotated[str, typer.Option("--protocol", help="openai | azure")] = "openai",
    host: Annotated[str, typer.Option("--host")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port")] = 9100,
    api_key: Annotated[list[str], typer.Option("--api-key", help="Accepted key(s).")] = ["sk-sim"],  # noqa: B006
    latency: Annotated[float, typer.Option("--latency", help="Seconds added to every call.")] = 0.0,
    deployment: Annotated[list[str], typer.Option("--deployment", help="Azure deployment name(s).")] = ["gpt-image-2"],  # noqa: B006
    cache: Annotated[bool, typer.Option("--cache", help="Reuse rendered images (benchmarks).")] = False,
    incompressible: Annotated[bool, typer.Option("--incompressible", help="Noisy full-size PNG answers.")] = False,
) -> None:
    """Run the upstream simulator (real OpenAI / Azure wire protocol, fault injection)."""
    from imagerelay_sim.server import run

    if protocol not in ("openai", "azure"):
        raise typer.BadParameter("protocol must be openai or azure")
    run(
        protocol,  # type: ignore[arg-type]
        host,
        port,
        api_key,
        latency,
        deployments=tuple(deployment),
        cache=cache,
        incompressible=incompressible,
    )


@app.command("check-catalog")
def check_catalog(path: Path, data_dir: DataDir = None, database_url: DbUrl = None) -> None:
    """Validate a catalog file without starting the gateway: every entry, and an enabled
    channel for every route (with --data-dir/--database-url, counting stored channels)."""
    try:
        cat = load_catalog(path)
    except CatalogError as exc:
        _fail(f"catalog error: {exc}")
    with_db = data_dir is not None or database_url is not None or bool(os.environ.get("IMAGERELAY_DATABASE_URL"))
    settings = _settings(data_dir, database_url, path)
    problems = _pool_problems(cat, settings if with_db else None)
    if problems.unserved:
        where = "" if with_db else " (stored channels not counted: pass --data-dir or --database-url)"
        _fail(f"catalog error: no enabled channel serves {'; '.join(problems.unserved)}{where}")
    console.print(f"ok: {len(cat.routes)} routes in {len(cat.groups)} groups", highlight=False)


def _pool_problems(cat: Any, settings: Settings | None) -> Any:
    """How the catalog's channels, plus the stored ones when ``settings`` is given, cover
    the routes (``catalog.channel_rules.pool_problems``)."""
    from imagerelay.catalog.channel_rules import pool_problems
    from imagerelay.catalog.loader import route_pools

    async def _specs(s: Any) -> list[Any]:
        await s.directory.load()
        return [v.spec for v in s.directory.views()]

    specs = list(cat.file.channels) if settings is None else _run(_specs, settings)
    return pool_problems(route_pools(cat), specs, cat.file.mixed_simulator_pools)


def _check_pools_at_start(cat: Any, settings: Settings, demo: bool) -> None:
    """Refuse to start with a route nobody serves (it would answer 503 forever); warn
    loudly when, outside a demo, customers would get the simulator's pictures."""
    problems = _pool_problems(cat, settings)
    if problems.unserved:
        _fail(
            f"no enabled channel serves {'; '.join(problems.unserved)}: add or enable a channel "
            "in that pool (docs/channels.md), or remove the route from the catalog"
        )
    if problems.simulator_only and not demo:
        err_console.print(
            "[bold yellow]WARNING:[/bold yellow] only the offline simulator serves "
            f"{'; '.join(problems.simulator_only)}: callers get locally rendered test pictures, not real "
            "images. Add real channels (docs/channels.md), or pass --demo if this is a demo.",
            highlight=False,
            soft_wrap=True,
        )


def main() -> None:
    """The ``imagerelay`` command: any failure is one line on stderr and a non-zero exit
    status, never a traceback (a server that is down, a missing file, bad input)."""
    try:  # Typer 0.29 carries its own copy of click
        from typer._click import exceptions as cx
    except ImportError:  # pragma: no cover - older Typer uses click itself
        from click import exceptions as cx  # type: ignore[no-redef]

    try:
        code = app(prog_name="imagerelay", standalone_mode=False)
    except cx.NoArgsIsHelpError as exc:
        print(exc.ctx.get_help() if exc.ctx else exc.format_message())
        code = 2
    except cx.UsageError as exc:
        command = exc.ctx.command_path if exc.ctx else "imagerelay"
        _print_error(f"{exc.format_message()} (see {command} --help)")
        code = 2
    except cx.ClickException as exc:
        _print_error(exc.format_message())
        code = exc.exit_code
    except typer.Abort:
        code = 130
    except Exception as exc:  # noqa: BLE001 - the last line of defence: one line, no traceback
        _print_error(_describe(exc))
        code = 1
    sys.exit(code if isinstance(code, int) else 0)


def _print_error(message: str) -> None:
    from rich.markup import escape

    err_console.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)


def _describe(exc: Exception) -> str:
    """One line for an exception an operator can act on, without secrets or internals."""
    import httpx
    from pydantic import ValidationError
    from sqlalchemy.exc import ArgumentError, DBAPIError

    if isinstance(exc, httpx.TransportError):
        where = exc.request.url.copy_with(query=None) if _has_request(exc) else "the gateway"
        return f"cannot reach {where}: {type(exc).__name__} ({_first_line(exc) or 'no answer'}); is it running?"
    if isinstance(exc, CatalogError):
        return f"catalog error: {exc}"
    if isinstance(exc, ModuleNotFoundError) and exc.name and exc.name.split(".")[0] == "asyncpg":
        return "PostgreSQL needs the postgres extra: .venv/bin/pip install -e '.[postgres]'"
    if isinstance(exc, ModuleNotFoundError) and exc.name and exc.name.split(".")[0] == "redis":
        return "Redis needs the redis extra: .venv/bin/pip install -e '.[redis]'"
    if isinstance(exc, OSError) and exc.filename:
        return f"cannot open {exc.filename}: {exc.strerror}"
    if isinstance(exc, DBAPIError):
        return f"database error: {_first_line(exc.orig) or type(exc.orig).__name__}"
    if isinstance(exc, ArgumentError):
        return f"invalid database URL: {_first_line(exc)}"
    if isinstance(exc, OSError):  # e.g. a database server that refuses connections
        return f"{type(exc).__name__}: {exc.strerror or _first_line(exc)} (is the database or server running?)"
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        return f"invalid setting {'.'.join(str(p) for p in first['loc'])}: {first['msg']}"
    return f"{type(exc).__name__}: {_first_line(exc)}"


def _has_request(exc: Any) -> bool:
    try:
        exc.request  # noqa: B018 - httpx raises RuntimeError when the error has no request
    except RuntimeError:
        return False
    return True


def _first_line(value: object) -> str:
    lines = str(value).strip().splitlines()
    return lines[0][:300] if lines else ""


if __name__ == "__main__":  # pragma: no cover
    main()
