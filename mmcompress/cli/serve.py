"""``mmcompress serve``: the HTTP compression service and OpenAI-compatible proxy (FastAPI + uvicorn)."""
from __future__ import annotations

from .common import add_model_flags, method_overrides


def add_parser(sub) -> None:
    p = sub.add_parser("serve", help="serve POST /v1/compress and a compressing /v1/chat/completions proxy")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s, this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default: %(default)s)")
    p.add_argument("--method", "-m", default="selective_context",
                   help="default hard method or shipped config name; loaded once at start-up")
    p.add_argument("--rate", "-r", type=float, default=0.5, help="default fraction of tokens kept, in (0, 1]")
    p.add_argument("--model", help="scorer model of the default method: HF id, local folder or alias")
    p.add_argument("--set", dest="overrides", action="append", metavar="KEY=VALUE",
                   help="config field of the default method, e.g. --set unit=sentence")
    p.add_argument("--upstream-base-url", help="OpenAI-compatible API the proxy forwards to, e.g. http://host:8080/v1")
    p.add_argument("--upstream-api-key", help="API key sent upstream (default: the client's Authorization header)")
    p.add_argument("--max-batch", type=int, default=16, help="most requests compressed in one batch")
    p.add_argument("--max-wait-ms", type=float, default=5.0, help="how long a batch waits for more requests")
    add_model_flags(p)
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(func=run)


def settings_from_args(args):
    from ..serve.app import ServeSettings, check_settings

    config = method_overrides(args)
    settings = ServeSettings(method=args.method, rate=args.rate, config=config,
                             upstream_base_url=args.upstream_base_url, upstream_api_key=args.upstream_api_key,
                             max_batch=args.max_batch, max_wait_ms=args.max_wait_ms)
    check_settings(settings)
    return settings


def run(args) -> int:
    from ..errors import ConfigError
    from ..extras import require

    require("uvicorn", "mmcompress serve")
    settings = settings_from_args(args)  # bad settings fail here, before any model loads
    if not 0 <= args.port < 65536:
        raise ConfigError(f"--port must be in 0..65535, got {args.port}")
    import uvicorn

    from ..serve.app import create_app

    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level=args.log_level)
    return 0
