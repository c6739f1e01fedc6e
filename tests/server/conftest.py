"""A real ComfyUI server on loopback, started once per test session, with our pack and the tiny-model pack.

The server runs from the cached ComfyUI tree (tests/comfy_host.COMFY_DIR) in a fresh temporary base
directory, so models/loras, user settings and logs are the test's own. A failed import of either pack
fails every test that uses the server, with the matching log lines in the message.
"""

import json
import logging
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import requests

from tests import comfy_host

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
TINY_PACK = REPO_ROOT / "tests" / "tiny_models_pack"
PACK_DIRS = {"eraseanything": REPO_ROOT, "ea_tiny_models": TINY_PACK}
REQUIRED_NODES = ("EraseAnything_TrainErasureLoRA", "EATest_TinyFluxLoader")
SETTINGS = {"Comfy.TutorialCompleted": True, "Comfy.Minimap.Visible": False}
TERMINAL_EVENTS = ("execution_success", "execution_error", "execution_interrupted")
IMPORT_ERROR_MARKERS = ("IMPORT FAILED", "Cannot import", "Error while calling comfy_entrypoint",
                        "did not return", "Skip ")
START_TIMEOUT_S = 90.0
STOP_GRACE_S = 10.0


class Messages(list):
    """The JSON websocket messages of one prompt, in arrival order, plus what else arrived."""

    def __init__(self, prompt_id: str):
        super().__init__()
        self.prompt_id = prompt_id
        self.binary_frames = 0

    def of_type(self, kind: str) -> list[dict]:
        return [m for m in self if m.get("type") == kind]

    @property
    def terminal(self) -> dict | None:
        return next((m for m in reversed(self) if m.get("type") in TERMINAL_EVENTS), None)


class ComfyServer:
    """Handle on one running server: HTTP and websocket helpers for the tests."""

    def __init__(self, base_dir: Path, port: int, process: subprocess.Popen, log_path: Path):
        self.base_dir = base_dir
        self.port = port
        self.process = process
        self.log_path = log_path
        self.base_url = f"http://127.0.0.1:{port}"
        self.ws_url = f"ws://127.0.0.1:{port}/ws"
        self.client_id = uuid.uuid4().hex
        self.startup_s: float | None = None

    @property
    def loras_dir(self) -> Path:
        return self.base_dir / "models" / "loras"

    def get(self, path: str, **kwargs) -> requests.Response:
        return requests.get(self.base_url + path, timeout=kwargs.pop("timeout", 30), **kwargs)

    def post(self, path: str, **kwargs) -> requests.Response:
        return requests.post(self.base_url + path, timeout=kwargs.pop("timeout", 30), **kwargs)

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def queue(self, prompt: dict) -> str:
        """POST an API-format prompt; returns its prompt_id. A validation error fails with the server's reply."""
        reply = self.post("/prompt", json={"prompt": prompt, "client_id": self.client_id})
        if reply.status_code != 200:
            raise AssertionError(f"POST /prompt answered {reply.status_code}: {reply.text}")
        return reply.json()["prompt_id"]

    def interrupt(self, prompt_id: str | None = None) -> None:
        """POST /interrupt; with a prompt_id only that prompt is interrupted, and only if it is running."""
        body = {"prompt_id": prompt_id} if prompt_id else {}
        self.post("/interrupt", json=body).raise_for_status()

    def history(self, prompt_id: str) -> dict:
        return self.get(f"/history/{prompt_id}").json().get(prompt_id, {})

    def run(self, prompt: dict, timeout: float = 120.0, on_message=None) -> Messages:
        """Queue `prompt` and collect its websocket messages until execution_success/error/interrupted.

        on_message(message, messages) is called for each JSON message as it arrives (e.g. to interrupt).
        Binary frames (previews, progress text) are counted in `messages.binary_frames`, not kept.
        On timeout the prompt is interrupted and TimeoutError names the last message types.
        """
        import websocket  # websocket-client

        ws = websocket.create_connection(f"{self.ws_url}?clientId={self.client_id}", timeout=10)
        try:
            messages = Messages(self.queue(prompt))
            deadline = time.monotonic() + timeout
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self.interrupt(messages.prompt_id)
                    kinds = [m.get("type") for m in messages[-10:]]
                    raise TimeoutError(f"prompt {messages.prompt_id} did not finish in {timeout:.0f} s; "
                                       f"last messages {kinds}; server log tail:\n{self.log_tail()}")
                ws.settimeout(remaining)
                try:
                    opcode, data = ws.recv_data()
                except websocket.WebSocketTimeoutException:
                    continue
                if opcode == websocket.ABNF.OPCODE_BINARY:
                    messages.binary_frames += 1
                    continue
                if opcode != websocket.ABNF.OPCODE_TEXT:
                    continue
                message = json.loads(data)
                messages.append(message)
                if on_message is not None:
                    on_message(message, messages)
                if (message.get("type") in TERMINAL_EVENTS
                        and message.get("data", {}).get("prompt_id") == messages.prompt_id):
                    return messages
        finally:
            ws.close()

    def stop(self) -> None:
        """Terminate this server's process (only it), then kill it after a grace period."""
        if self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            logger.warning("ComfyUI pid %d ignored SIGTERM for %.0f s; killing it", self.process.pid, STOP_GRACE_S)
            self.process.kill()
            self.process.wait(timeout=STOP_GRACE_S)
        logger.info("ComfyUI server pid %d stopped (exit code %s)", self.process.pid, self.process.returncode)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _python() -> str:
    venv_python = comfy_host.CACHE / "venv" / "bin" / "python"
    return str(venv_python) if venv_python.exists() else sys.executable


def _make_base(base: Path) -> None:
    custom_nodes = base / "custom_nodes"
    custom_nodes.mkdir(parents=True)
    for name, target in PACK_DIRS.items():
        (custom_nodes / name).symlink_to(target, target_is_directory=True)
    settings = base / "user" / "default" / "comfy.settings.json"
    settings.parent.mkdir(parents=True)
    settings.write_text(json.dumps(SETTINGS), encoding="utf-8")


def _wait_until_up(server: ComfyServer) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"ComfyUI exited with code {server.process.returncode} during startup; "
                               f"log {server.log_path}:\n{server.log_tail()}")
        try:
            if server.get("/system_stats", timeout=2).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"ComfyUI did not answer /system_stats within {START_TIMEOUT_S:.0f} s; "
                       f"log {server.log_path}:\n{server.log_tail()}")


def pack_import_errors(log_text: str) -> list[str]:
    """Log lines that report a failed import of one of our packs (ComfyUI's own extras are ignored)."""
    pack_paths = [f"custom_nodes{os.sep}{name}" for name in PACK_DIRS]
    return [line for line in log_text.splitlines()
            if any(marker in line for marker in IMPORT_ERROR_MARKERS)
            and any(path in line for path in pack_paths)]


def _check_packs_loaded(server: ComfyServer) -> None:
    errors = pack_import_errors(server.log_text())
    if errors:
        raise RuntimeError("our node pack failed to import in ComfyUI:\n" + "\n".join(errors)
                           + f"\n--- log {server.log_path} tail ---\n{server.log_tail(60)}")
    missing = [node for node in REQUIRED_NODES if node not in server.get(f"/object_info/{node}").json()]
    if missing:
        raise RuntimeError(f"/object_info lacks {missing}: the pack loaded but did not register them; "
                           f"log tail:\n{server.log_tail(60)}")


def start_server(base: Path) -> ComfyServer:
    """Start ComfyUI on a free loopback port with `base` as its base directory; returns once it is ready."""
    _make_base(base)
    port = _free_port()
    log_path = base / "comfyui.log"
    cmd = [_python(), "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port), "--base-directory", str(base),
           "--disable-api-nodes", "--database-url", "sqlite:///:memory:", "--disable-auto-launch"]
    started = time.monotonic()
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(cmd, cwd=comfy_host.COMFY_DIR, stdout=log_file, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    server = ComfyServer(base, port, process, log_path)
    try:
        _wait_until_up(server)
        server.startup_s = time.monotonic() - started
        _check_packs_loaded(server)
    except BaseException:
        server.stop()
        raise
    logger.info("ComfyUI pid %d up at %s in %.1f s (base %s)", process.pid, server.base_url, server.startup_s, base)
    return server


_started: dict[str, ComfyServer | BaseException] = {}


@pytest.fixture(scope="session")
def comfy_server(tmp_path_factory, request) -> ComfyServer:
    """One server per pytest process, shared by tests/server and tests/browser (which imports this fixture)."""
    if "server" not in _started:
        try:
            _started["server"] = start_server(tmp_path_factory.mktemp("comfy_base"))
            request.config.add_cleanup(_started["server"].stop)
        except RuntimeError as e:
            _started["server"] = e
    server = _started["server"]
    if isinstance(server, BaseException):
        pytest.fail(f"ComfyUI test server unavailable: {server}", pytrace=False)
    return server


def pytest_collection_modifyitems(config, items):
    tests_dir = REPO_ROOT / "tests"
    for item in items:
        path = Path(str(item.path))
        if tests_dir / "server" in path.parents:
            item.add_marker(pytest.mark.server)
        elif tests_dir / "browser" in path.parents:
            item.add_marker(pytest.mark.browser)
            item.add_marker(pytest.mark.server)
