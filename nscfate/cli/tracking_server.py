"""``python -m nscfate.cli.tracking_server`` (``make tracking-server``): a team MLflow tracking server.

``mlflow server`` with a PostgreSQL backend store (the database is created when missing) and proxied
artifacts (``--serve-artifacts`` into ``--artifacts``: a folder here, ``s3://...`` in production),
bound to 127.0.0.1 unless ``--host`` says otherwise. ``--auth`` turns on MLflow's basic-auth app:
its admin is ``MLFLOW_TRACKING_USERNAME`` with the password ``MLFLOW_TRACKING_PASSWORD``, read from
the environment only (never an argument, never written to a file; the auth user store keeps a hash).
Clients then use ``tracking.uri=http://<host>:<port>`` with the same two variables set.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from nscfate.cli.errors import friendly_errors
from nscfate.errors import NscfateError
from nscfate.files import atomic_write
from nscfate.redact import redact

DEFAULT_BACKEND = "postgresql+psycopg2://postgres@127.0.0.1:5432/nscfate_mlflow"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The server's settings (each also an environment variable, for the make target)."""
    env = os.environ.get
    p = argparse.ArgumentParser(prog="nscfate-tracking-server", description=__doc__)
    p.add_argument("--backend", default=env("TRACKING_BACKEND", DEFAULT_BACKEND))
    p.add_argument("--artifacts", default=env("TRACKING_ARTIFACTS", "mlruns/server-artifacts"))
    p.add_argument("--host", default=env("TRACKING_HOST", "127.0.0.1"))
    p.add_argument("--port", type=int, default=int(env("TRACKING_PORT", "5000")))
    p.add_argument("--workers", type=int, default=int(env("TRACKING_WORKERS", "1")))
    p.add_argument(
        "--auth",
        action="store_true",
        default=env("TRACKING_AUTH", "") not in ("", "0", "false"),
        help="MLflow's basic-auth app; admin from MLFLOW_TRACKING_USERNAME/PASSWORD",
    )
    p.add_argument("--state-dir", default=env("TRACKING_STATE", "mlruns/server"))
    return p.parse_args(argv)


def ensure_database(url: str) -> None:
    """Create the PostgreSQL database of ``url`` when it does not exist (NscfateError if the
    server is unreachable or the URL is not PostgreSQL)."""
    if not url.startswith("postgresql"):
        raise NscfateError(
            f"--backend={url}: expected a postgresql:// URL (the team server's store)"
        )
    import sqlalchemy

    base, name = url.rsplit("/", 1)
    admin = sqlalchemy.create_engine(
        f"{base}/postgres", isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 5}
    )
    try:
        with admin.connect() as conn:
            found = conn.execute(
                sqlalchemy.text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}
            ).first()
            if not found:
                conn.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    except Exception as err:
        raise NscfateError(f"--backend={url} is unreachable: {str(err).splitlines()[0]}") from err
    finally:
        admin.dispose()


def auth_config(state_dir: Path) -> dict[str, str]:
    """Write the basic-auth app's config (no password in it) and return the server's extra
    environment: the config's path and the first admin's password, both from the environment."""
    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
    password = os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if not user or not password:
        raise NscfateError(
            "--auth: set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (the admin's login)"
        )
    if len(password) < 12:
        raise NscfateError(
            "MLFLOW_TRACKING_PASSWORD: MLflow's basic-auth app wants at least 12 characters"
        )
    state_dir.mkdir(parents=True, exist_ok=True)
    ini = state_dir / "basic_auth.ini"
    text = (
        "[mlflow]\ndefault_permission = READ\n"
        f"database_uri = sqlite:///{state_dir.resolve()}/basic_auth.db\n"
        f"admin_username = {user}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    with atomic_write(ini) as tmp:
        tmp.write_text(text)
    return {
        "MLFLOW_AUTH_CONFIG_PATH": str(ini),
        "MLFLOW_AUTH_ADMIN_PASSWORD": password,
        "MLFLOW_FLASK_SERVER_SECRET_KEY": _flask_key(state_dir),
    }


def _flask_key(state_dir: Path) -> str:
    """The auth app's CSRF key: MLFLOW_FLASK_SERVER_SECRET_KEY, else one made once and kept
    (owner-only) in the state folder, so a restarted server accepts its sessions."""
    if key := os.environ.get("MLFLOW_FLASK_SERVER_SECRET_KEY"):
        return key
    path = state_dir / "flask_secret_key"
    if not path.exists():
        import secrets

        with atomic_write(path) as tmp:
            tmp.write_text(secrets.token_hex(32))
            tmp.chmod(0o600)
    return path.read_text().strip()


def server_command(args: argparse.Namespace) -> list[str]:
    """The ``mlflow server`` command line for ``args``."""
    artifacts = args.artifacts
    if "://" not in artifacts:
        Path(artifacts).mkdir(parents=True, exist_ok=True)
        artifacts = str(Path(artifacts).resolve())
    cmd = [
        str(Path(sys.executable).parent / "mlflow"),
        "server",
        "--backend-store-uri",
        args.backend,
        "--serve-artifacts",
        "--artifacts-destination",
        artifacts,
        "--host",
        args.host,
        "--port",
        str(args.port),
        "--workers",
        str(args.workers),
    ]
    return [*cmd, "--app-name", "basic-auth"] if args.auth else cmd


@friendly_errors("nscfate-tracking-server")
def main(argv: list[str] | None = None) -> None:
    """Prepare the store (and the auth config) and replace this process by ``mlflow server``."""
    args = parse_args(argv)
    ensure_database(args.backend)
    env = dict(os.environ)
    # MLflow's job runner (huey consumers for GenAI trace jobs) is nothing nscfate uses: off
    # unless asked for, which saves a handful of processes on a small server.
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    if args.auth:
        env |= auth_config(Path(args.state_dir))
    cmd = server_command(args)
    bin_dir = str(Path(sys.executable).parent)  # the server starts uvicorn/gunicorn from PATH
    env["PATH"] = f"{bin_dir}:{env.get('PATH', '')}"
    print(f"tracking server: {redact(' '.join(cmd[1:]))}", flush=True)
    print(f"clients: tracking.uri=http://{args.host}:{args.port}", flush=True)
    os.execve(cmd[0], cmd, env)


if __name__ == "__main__":
    main()
