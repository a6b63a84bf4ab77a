"""`provisioner serve`: phone-facing HTTPS and TFTP in one process."""

from __future__ import annotations

import functools
import logging
import signal
import socket
import ssl
import threading
from urllib.parse import urlsplit

import uvicorn

from provisioner.alerts import Alerts
from provisioner.errors import InputError
from provisioner.inventory import load_inventory
from provisioner.yamlsrc import ProblemsError
from provisioner.operations import reconcile, sync_inventory
from provisioner.registrar.acl import export as export_acls
from provisioner.runtime import Runtime
from provisioner.serve.digest import DigestAuth
from provisioner.serve.housekeeping import Housekeeper
from provisioner.serve.https import answer, create_app
from provisioner.serve.limits import ConnectionLimits
from provisioner.serve.protocol import with_direct
from provisioner.serve.pipeline import EventRecorder, Pipeline
from provisioner.serve.tftp import TftpService
from provisioner.serve.tls import ensure_tls, fingerprint

log = logging.getLogger("provisioner.serve")


def parse_hostport(text: str, what: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InputError(f"--{what}: expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def _check_bind(kind: int, host: str, port: int, what: str) -> None:
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(fam, kind) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise InputError(f"--{what} {host}:{port}: cannot listen there ({e.strerror})") from None


def server_names(rt: Runtime, https_host: str) -> set[str]:
    names = {"localhost", "127.0.0.1"}
    if https_host not in ("0.0.0.0", "::"):
        names.add(https_host)
    inv = rt.inventory
    for s in list(inv.site_settings.values()) + [d.settings for d in inv.resolved.values()]:
        host = urlsplit(s.provisioning_url).hostname
        if host:
            names.add(host)
    return names


class InventoryWatcher:
    """Reloads inventory.yaml when it changes (an `adopt` on site, an operator's edit) without a restart.

    A broken edit is logged with its FILE:LINE problems and the running inventory stays in force.
    """

    def __init__(self, rt: Runtime, interval: float = 1.0):
        self.rt = rt
        self.interval = interval
        self._stop = threading.Event()
        self._seen = self._stamp()
        self._thread = threading.Thread(target=self._run, name="inventory-watcher", daemon=True)

    def _stamp(self):
        try:
            st = self.rt.inventory_path.stat()
            return (st.st_mtime_ns, st.st_size, st.st_ino)
        except OSError:
            return None

    def check(self) -> bool:
        stamp = self._stamp()
        if stamp == self._seen or stamp is None:
            return False
        self._seen = stamp
        try:
            inv = load_inventory(self.rt.inventory_path, self.rt.catalog)
        except ProblemsError as e:
            log.error("inventory change ignored, the running inventory stays in force:\n%s", e)
            return False
        self.rt._inventory = inv
        result = sync_inventory(self.rt, actor="serve")
        log.info("inventory reloaded: %d devices (%d new, %d changed)", len(inv.resolved), len(result.added),
                 len(result.updated))
        return True

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.check()
            except Exception:
                log.exception("inventory reload failed")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def run(rt: Runtime, https: str, tftp: str | None, echo=print, sip_pnp: list[str] | None = None,
        api: str | None = None) -> None:
    """`sip_pnp`: None = off; else the interface addresses the SIP PnP responder listens on ([] = all).
    `api`: HOST:PORT of the helpdesk API and web page (HTTPS, same certificate), or None."""
    https_host, https_port = parse_hostport(https, "https")
    api_addr = parse_hostport(api, "api") if api else None
    if api_addr:
        if api_addr[1] == https_port:
            raise InputError("--api: give the helpdesk API its own port")
        _check_bind(socket.SOCK_STREAM, *api_addr, "api")
    tftp_addr = parse_hostport(tftp, "tftp") if tftp else None
    _check_bind(socket.SOCK_STREAM, https_host, https_port, "https")
    if tftp_addr:
        _check_bind(socket.SOCK_DGRAM, *tftp_addr, "tftp")
    pnp = None
    if sip_pnp is not None:
        from provisioner.discovery.sip_pnp import start_for_serve
        pnp = start_for_serve(rt, sip_pnp, echo)
    inv = rt.inventory
    result = sync_inventory(rt, actor="serve")
    reconcile(rt, actor="serve")  # registrars hold what the devices hold: repairs a switch cut short by a crash
    for a in export_acls(rt, actor="serve"):  # the sites' networks, as the registrars' access lists
        if a.outcome.startswith("failed"):
            log.warning("access list of %s not exported: %s", a.registrar, a.outcome)
    names = server_names(rt, https_host)
    if api_addr and api_addr[0] not in ("0.0.0.0", "::"):
        names.add(api_addr[0])
    tls = ensure_tls(rt.home, names)
    recorder = EventRecorder(rt)
    sec = inv.security
    alerts = Alerts(sec.alert_command, sec.alert_webhook, per_minute=sec.alerts_per_minute,
                    repeat_seconds=sec.alert_repeat_seconds)
    pipeline = Pipeline(rt, tls.ca_cert.read_bytes(), recorder, DigestAuth(rt.keyring.derive("digest-nonce")),
                        alerts=alerts)
    limits = ConnectionLimits(pipeline.guard, lambda ip: rt.inventory.is_site_address(ip),
                              sec.connections_per_source, sec.connections_per_network, sec.body_seconds)
    housekeeper = Housekeeper(pipeline, sec.fetch_event_days).start()
    client_ca = str(rt.inventory_path.parent / sec.client_ca) if sec.client_ca else None
    tftp_service = None
    if tftp_addr:
        tftp_service = TftpService(pipeline, tftp_addr[0], tftp_addr[1], rt.home / "tftp-root",
                                   rate=sec.tftp_requests_per_second, max_sessions=sec.tftp_sessions)
        tftp_service.start()
    config = uvicorn.Config(create_app(pipeline), host=https_host, port=https_port,
                            ssl_certfile=str(tls.cert), ssl_keyfile=str(tls.key), log_level="warning",
                            access_log=False, server_header=False, date_header=True, proxy_headers=False,
                            lifespan="off",
                            timeout_keep_alive=15, limit_concurrency=sec.max_connections,
                            h11_max_incomplete_event_size=16384,
                            http=with_direct(functools.partial(answer, pipeline), limits),
                            ssl_ca_certs=client_ca, ssl_cert_reqs=ssl.CERT_OPTIONAL if client_ca else ssl.CERT_NONE)
    server = uvicorn.Server(config)
    watcher = InventoryWatcher(rt)
    watcher.start()
    log.info("serving %d devices (%d new) from %s", len(inv.resolved), len(result.added), rt.inventory_path)
    echo(banner(rt, https_host, https_port, tftp_addr, tls.ca_cert))
    api_service = None
    try:
        if api_addr:
            from provisioner.api import ApiService
            api_service = ApiService(rt, api_addr[0], api_addr[1], str(tls.cert), str(tls.key))
            api_service.start()
            echo(f"Helpdesk API and web page on https://{api_addr[0]}:{api_addr[1]}/ (OpenAPI: /api/openapi.json; "
                 "tokens: provisioner api tokens create --role viewer|helpdesk|admin)")
        _run_until_signalled(server)
    finally:
        if api_service:
            api_service.stop()
        if pnp:
            pnp.stop()
        watcher.stop()
        if tftp_service:
            tftp_service.stop()
        housekeeper.stop()
        recorder.close()
        alerts.close()
        log.info("stopped")


class _Signalled(Exception):
    pass


def _run_until_signalled(server: uvicorn.Server) -> None:
    """uvicorn shuts down gracefully on SIGTERM, then raises the signal again with the handler it found:
    with the default one the process died there, before the event recorder wrote its last batch and the
    other services stopped. Our handler turns it into an exception, and the caller cleans up."""
    def stop(signum, frame):
        raise _Signalled(signum)
    previous = signal.signal(signal.SIGTERM, stop) if threading.current_thread() is threading.main_thread() else None
    try:
        server.run()
    except _Signalled:
        pass
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def banner(rt: Runtime, host: str, port: int, tftp_addr, ca_path) -> str:
    inv = rt.inventory
    base = f"https://{host if host not in ('0.0.0.0', '::') else '127.0.0.1'}:{port}/p/"
    lines = [f"provisioner: HTTPS on {host}:{port}" + (f", TFTP on {tftp_addr[0]}:{tftp_addr[1]}" if tftp_addr else "")
             + f", {len(inv.resolved)} devices, state in {rt.home}",
             f"CA {ca_path}, SHA-256 fingerprint {fingerprint(ca_path)} (compare it with what a phone that got "
             f"the CA over TFTP shows)"]
    dev = next(iter(inv.resolved.values()), None)
    if dev:
        vendor = rt.catalog.get(dev.vendor)
        fname = vendor.trigger.filename_for(mac=dev.mac)
        ua = vendor.user_agent_for(dev.model, dev.mac) or vendor.display_name
        lines += [
            "",
            "Fetch a config like a phone does (the first fetch from the site's networks enrols the device",
            "and hands it its own provisioning credentials; every later fetch needs them):",
            f"  curl --cacert {ca_path} -A '{ua}' {base}{fname}",
            f"  curl --cacert {ca_path} -A '{ua}' --digest -u {dev.mac}:PASSWORD {base}{fname}",
            "  (PASSWORD is static.auto_provision.server.password from the first answer)",
        ]
        if tftp_addr:
            lines.append(f"  tftp {tftp_addr[0]} {tftp_addr[1]} -m binary -c get {fname} bootstrap.cfg   (secret-free)")
    lines.append("Stop with Ctrl-C.")
    return "\n".join(lines)
