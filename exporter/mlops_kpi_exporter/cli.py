"""Command line: serve, once, check, demo.

Exit codes: 0 success; 1 a source could not be read; 2 bad config or usage; 3 cannot listen.
"""

from __future__ import annotations

import argparse
import functools
import logging
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from prometheus_client.exposition import generate_latest
from prometheus_client.registry import CollectorRegistry

from mlops_kpi_exporter import __version__
from mlops_kpi_exporter.config import (
    DEFAULT_PORT,
    Config,
    ConfigError,
    load_config,
    load_web_config,
    parse_listen,
    redact_uri,
)
from mlops_kpi_exporter.derived import Plan, derive
from mlops_kpi_exporter.extras import MissingExtra
from mlops_kpi_exporter.metrics import billing
from mlops_kpi_exporter.metrics.costs import fixed_costs
from mlops_kpi_exporter.mlflow_client import MlflowConnection
from mlops_kpi_exporter.poller import Poller, Source, describe_error
from mlops_kpi_exporter.server import BasicAuth, ExporterApp, start_http_server
from mlops_kpi_exporter.snapshot import ExporterCollector, SnapshotStore

log = logging.getLogger("mlops_kpi_exporter")

EXIT_OK, EXIT_SOURCE_FAILED, EXIT_CONFIG, EXIT_LISTEN = 0, 1, 2, 3


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and the record's structured extras."""

    STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}
    converter = time.gmtime  # the "Z" below means UTC

    def format(self, record: logging.LogRecord) -> str:
        import json

        line = {"ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
                "level": record.levelname.lower(), "logger": record.name, "msg": record.getMessage()}
        line.update({k: v for k, v in vars(record).items() if k not in self.STANDARD})
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def prepare(config: Config) -> tuple[MlflowConnection, list[Source]]:
    """The MLflow connection (secrets read) and every source of a validated config, for all commands.

    Nothing here touches the network or the process: a config refused here (ConfigError) leaves
    the running one exactly as it was. The caller applies the connection once it commits to it.
    """
    mlflow = MlflowConnection.from_config(config)
    return mlflow, build_sources(config, mlflow)


def build_sources(config: Config, mlflow: MlflowConnection) -> list[Source]:
    from mlops_kpi_exporter.sources.kpis import KpiSource
    from mlops_kpi_exporter.sources.mlflow_runs import MlflowSource
    from mlops_kpi_exporter.sources.registry import RegistrySource

    sources: list[Source] = [MlflowSource(config, mlflow)]
    # Sharded (mlflow.shard): every shard watches its own experiments; what is not split by experiment
    # (KPIs, the registry, the gateway's budgets, the bill's own figures, endpoints) runs on the first
    # shard only, so that Prometheus can sum the shards. The others still read the FOCUS bills for their
    # runs' join and calibration, without exporting them.
    first = config.mlflow.shard is None or config.mlflow.shard.first
    joins_bill = config.pricing.calibrate_from_bill or bool(config.billing.run_join)
    if config.kpis and first:
        sources.append(KpiSource(config, mlflow))
    if config.registry.enabled and first:
        sources.append(RegistrySource(config, mlflow))
    if config.traces.enabled:  # split by experiment like the runs: every shard counts its own traces
        from mlops_kpi_exporter.sources.traces import TraceSource

        sources.append(TraceSource(config, mlflow))
    if config.reads_gateway and first:  # the gateway's budgets are not split by experiment
        from mlops_kpi_exporter.sources.gateway import GatewaySource

        sources.append(GatewaySource(config, mlflow))
    if config.billing.sources and (first or joins_bill):
        from mlops_kpi_exporter.sources.billing import bill_sources

        sources += bill_sources(config, export=first)
    if config.endpoints and first:
        from mlops_kpi_exporter.pricing import Pricer
        from mlops_kpi_exporter.sources.endpoints import EndpointSource

        pricer = Pricer(config.pricing)
        sources += [EndpointSource(endpoint, config, pricer) for endpoint in config.endpoints]
    return sources


def build_store(config: Config, sources: list[Source]) -> SnapshotStore:
    """The snapshot store of these sources, with the derived stage the config asks for."""
    plan = Plan.of(config, [source.name for source in sources])
    return SnapshotStore(derive=functools.partial(derive, plan))


def build_registry(store: SnapshotStore, config: Config) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    first = config.mlflow.shard is None or config.mlflow.shard.first  # the config's figures once, not per shard
    static = fixed_costs(config) + billing.budget(config) if first else []
    registry.register(ExporterCollector(store, __version__, config.pricing.currency, static))
    return registry


def _listen_address(text: str) -> tuple[str, int]:
    try:
        return parse_listen(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _links(config: Config) -> dict[str, str]:
    links = {"MLflow tracking URI": redact_uri(config.mlflow.tracking_uri)}
    if config.mlflow.ui_url:
        links["MLflow UI"] = redact_uri(config.mlflow.ui_url)
    return links


def serve(config: Config, listen: tuple[str, int] | None, title: str = "mlops-kpi-exporter",
          config_path: str | None = None, web_config: str | None = None) -> int:
    web_file = web_config or config.server.web_config_file
    web = load_web_config(web_file) if web_file else None
    mlflow, sources = prepare(config)
    mlflow.apply()
    store = build_store(config, sources)
    poller = Poller(sources, store)
    host, port = listen or parse_listen(config.server.listen)
    auth = BasicAuth(web.basic_auth_users) if web and web.basic_auth_users else None
    app = ExporterApp(build_registry(store, config), store, title, _links(config), auth)
    try:
        server, _ = start_http_server(app, host, port, web.tls_server_config if web else None)
    except OSError as exc:
        print(f"error: cannot listen on {host}:{port}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_LISTEN
    log.info("listening on http://%s:%d/ (version %s)", host, port, __version__)
    stop, reload = threading.Event(), threading.Event()

    def _stop(signum: int, _frame: object) -> None:
        log.info("received %s, shutting down", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGHUP, lambda *_: reload.set())
    poller.start()
    try:
        while not stop.wait(0.5):
            if reload.is_set():
                reload.clear()
                poller = _reload(config_path, app, poller) or poller
    finally:
        poller.stop()
        server.shutdown()
        server.server_close()
    return EXIT_OK


def _reload(path: str | None, app: ExporterApp, poller: Poller) -> Poller | None:
    """SIGHUP: a valid new config replaces the running one whole; a bad one changes nothing."""
    if path is None:
        log.warning("SIGHUP ignored: this exporter was not started from a config file")
        return None
    try:
        config = load_config(path)
        mlflow, sources = prepare(config)
    except ConfigError as exc:
        log.error("config reload failed, the running config stays in force:\n%s", exc,
                  extra={"event": "reload", "ok": False})
        app.store.reload_result(False)
        return None
    poller.stop(wait=True)  # no poll of the old config may run with the new credentials
    mlflow.apply()
    store = build_store(config, sources)
    fresh = Poller(sources, store)
    store.reload_result(True)
    app.swap(build_registry(store, config), store, _links(config))
    fresh.start()
    log.info("config reloaded from %s (the listen address changes only with a restart)", path,
             extra={"event": "reload", "ok": True})
    return fresh


def once(config: Config) -> int:
    mlflow, sources = prepare(config)
    mlflow.apply()
    store = build_store(config, sources)
    poller = Poller(sources, store)
    # all at once, as `serve` starts them: the derived figures are whole once every input has polled
    with ThreadPoolExecutor(max_workers=max(1, len(sources))) as pool:
        failed = [ok for ok in pool.map(poller.poll_once, sources) if not ok]
    sys.stdout.write(generate_latest(build_registry(store, config)).decode())
    _, states = store.states()
    for state in states:
        if not state.up:
            print(f"error: source {state.name} failed: {state.last_error}", file=sys.stderr)
    return EXIT_SOURCE_FAILED if failed else EXIT_OK


def check(config: Config, path: str) -> int:
    mlflow, sources = prepare(config)
    mlflow.apply()
    print(f"config {path}: ok")
    status = EXIT_OK
    for source in sources:
        try:
            print(f"source {source.name}: ok: {source.check()}")
        except Exception as exc:  # noqa: BLE001 - reported, and the exit code says so
            print(f"source {source.name}: FAILED: {describe_error(exc)}")
            status = EXIT_SOURCE_FAILED
    if status == EXIT_OK:
        for line in config_warnings(config, sources):
            print(f"warning: {line}")
    return status


def config_warnings(config: Config, sources: list[Source]) -> list[str]:
    """After every source answered `check`: the config's entries that match nothing. The FOCUS bills
    are read for it when runs are joined to them (Cost Explorer is not: each call is billed)."""
    from mlops_kpi_exporter.resolved import unmatched
    from mlops_kpi_exporter.sources.billing import BillingSource

    by_name = {source.name: source for source in sources}
    watched = getattr(by_name.get("mlflow"), "watched", {}).values()
    readings = getattr(by_name.get("kpis"), "checked", [])
    lost = [r.kpi.name for r in readings if r.missing == "experiment_not_found"]
    bills = []
    if config.billing.run_join:
        bills = [s.read() for s in sources if isinstance(s, BillingSource)]
    workspaces = getattr(by_name.get("mlflow"), "workspaces", None) is not None
    return unmatched(config, watched, lost, bills, workspaces)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mlops-kpi-exporter",
        description="Prometheus exporter: MLflow runs as cost, activity and health metrics.",
        epilog="Exit codes: 0 ok, 1 a source could not be read, 2 bad config or usage, 3 cannot listen.",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    common.add_argument("--log-format", default="text", choices=["text", "json"],
                        help="json: one object per line, with the poll's fields (source, duration, outcome)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    s = sub.add_parser("serve", parents=[common], help="poll on schedule and serve /metrics")
    s.add_argument("--config", required=True, metavar="FILE")
    s.add_argument("--listen", type=_listen_address, metavar="HOST:PORT", help="overrides server.listen")
    s.add_argument("--web-config", metavar="FILE", help="TLS and basic auth (exporter-toolkit web-config.yml); "
                   "overrides server.web_config_file")
    o = sub.add_parser("once", parents=[common], help="poll every source once and print the metrics")
    o.add_argument("--config", required=True, metavar="FILE")
    c = sub.add_parser("check", parents=[common], help="validate the config and reach every source")
    c.add_argument("--config", required=True, metavar="FILE")
    d = sub.add_parser(
        "demo", parents=[common], help="serve built-in demo data from a local MLflow store (no server, no config; needs the 'local' extra)"
    )
    d.add_argument("--listen", type=_listen_address, default=("127.0.0.1", DEFAULT_PORT), metavar="HOST:PORT")
    d.add_argument("--data-dir", type=Path, default=Path("demo-data"), metavar="DIR")
    d.add_argument("--reset", action="store_true", help="recreate the demo store (start times relative to now)")
    d.add_argument("--print-config", action="store_true", help="print the demo's config file and exit")
    sd = sub.add_parser("seed", parents=[common], help="write the demo history and a tiny servable model to a tracking server "
                        "(needs the 'local' extra)")
    sd.add_argument("--tracking-uri", required=True)
    tr = sub.add_parser("traffic", parents=[common], help="send steady demo predictions to a model server")
    tr.add_argument("--url", required=True, help="e.g. http://model:8080/invocations")
    tr.add_argument("--rps", type=float, default=2.0)
    tr.add_argument("--duration", type=float, help="seconds (default: until stopped)")
    tr.add_argument("--metrics-port", type=int, help="serve the client-side request metrics on this port")
    r = sub.add_parser("report", parents=[common], help="a period's costs and KPIs as one HTML file (or JSON, CSV)")
    r.add_argument("--config", required=True, metavar="FILE")
    r.add_argument("--since", default="30d", help="the period ending now, e.g. 7d, 30d (default)")
    r.add_argument("--from", dest="date_from", metavar="YYYY-MM-DD", help="period start (UTC), with --to")
    r.add_argument("--to", dest="date_to", metavar="YYYY-MM-DD", help="period end (UTC, exclusive)")
    r.add_argument("--format", choices=["html", "json", "csv"], default="html")
    r.add_argument("--out", required=True, metavar="FILE")
    e = sub.add_parser("estimate", parents=[common], help="back-of-the-envelope cost of a training job")
    e.add_argument("--instance", required=True, help="machine type, e.g. p3.2xlarge (catalog or config)")
    e.add_argument("--hours", required=True, type=float, help="run time in hours")
    e.add_argument("--count", type=int, default=1, help="number of machines (default 1)")
    e.add_argument("--storage-gb", type=float, default=0.0, help="data stored, in GB")
    e.add_argument("--months", type=float, default=1.0, help="months the data is stored (default 1)")
    e.add_argument("--storage-price", type=float, help="per GB-month (default pricing.storage_gb_month, 0.023)")
    e.add_argument("--config", metavar="FILE", help="use this config's prices and currency")
    e.add_argument("--json", action="store_true", help="print the figures as JSON")
    return p


def report_command(config: Config, args: argparse.Namespace) -> int:
    from datetime import datetime, timezone

    from mlops_kpi_exporter.config import parse_duration
    from mlops_kpi_exporter.report import Period, write_report

    now_ms = int(time.time() * 1000)
    try:
        if args.date_from or args.date_to:
            if not (args.date_from and args.date_to):
                raise ValueError("--from and --to go together")
            bounds = [int(datetime.strptime(d, "%Y-%m-%d").replace(tzinfo=timezone.utc).timestamp() * 1000)
                      for d in (args.date_from, args.date_to)]
            if bounds[1] <= bounds[0]:
                raise ValueError("--to must be after --from")
            period = Period(*bounds)
        else:
            period = Period(now_ms - int(parse_duration(args.since) * 1000), now_ms)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    mlflow = MlflowConnection.from_config(config)  # the same set-up as serve
    mlflow.apply()
    try:
        with open(args.out, "w", encoding="utf-8", newline="") as out:
            write_report(config, mlflow, period, args.format, out, now_ms)
    except Exception as exc:  # noqa: BLE001 - MLflow unreachable and the like: said, not a traceback
        print(f"error: cannot make the report: {describe_error(exc)}", file=sys.stderr)
        return EXIT_SOURCE_FAILED
    print(f"{args.format} report for {period.label()} written to {args.out}")
    return EXIT_OK


def estimate_command(args: argparse.Namespace) -> int:
    import json

    from mlops_kpi_exporter.config import PricingConfig
    from mlops_kpi_exporter.pricing import Pricer, estimate

    pricing = load_config(args.config).pricing if args.config else PricingConfig()
    try:
        result = estimate(Pricer(pricing), args.instance, args.hours, args.count, args.storage_gb, args.months,
                          args.storage_price)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    print(json.dumps(result.as_dict(), indent=2) if args.json else "\n".join(result.lines()))
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if args.log_format == "json" else
                         logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=getattr(logging, args.log_level), handlers=[handler])
    try:
        if args.command == "demo":
            from mlops_kpi_exporter import demo

            if args.print_config:  # the settings only: no store is made, no extra needed
                print(demo.config_yaml(args.data_dir), end="")
                return EXIT_OK
            config = demo.prepare(args.data_dir, reset=args.reset)  # the store first: the model lives beside it
            model = demo.DemoModelServer(args.data_dir).start()  # serving too: predictions from the first minute
            try:
                config = demo.prepare(args.data_dir, model_url=model.url)
                return serve(config, args.listen, title="mlops-kpi-exporter (demo data)")
            finally:
                model.close()
        if args.command == "estimate":
            return estimate_command(args)
        if args.command in ("seed", "traffic"):
            from mlops_kpi_exporter import demo

            if args.command == "seed":
                print(demo.seed_server(args.tracking_uri))
            else:
                demo.traffic(args.url, args.rps, args.duration, args.metrics_port)
            return EXIT_OK
        config = load_config(args.config)
        if args.command == "report":
            return report_command(config, args)
        if args.command == "serve":
            return serve(config, args.listen, config_path=args.config, web_config=args.web_config)
        if args.command == "once":
            return once(config)
        return check(config, args.config)
    except ConfigError as exc:
        print(f"config error:\n{exc}", file=sys.stderr)
        return EXIT_CONFIG
    except MissingExtra as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
