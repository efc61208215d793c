"""A local stand-in for the Hugging Face hub: the few HTTP endpoints huggingface_hub's snapshot_download uses.

The download step must be tested without network. This serves repositories held in memory on 127.0.0.1 with
the answers snapshot_download reads: repository info (the commit a revision resolves to), the file tree,
and each file with the commit and ETag headers; point ``HF_ENDPOINT`` at :attr:`HubStandIn.url`.
"""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class HubStandIn:
    """``add(kind, repo_id, files)`` repositories, then ``url``; ``close()`` stops it (the hub goes away)."""

    def __init__(self) -> None:
        self.repos: dict[tuple[str, str], dict] = {}
        self.requests: list[tuple[str, str]] = []
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                stand_in._answer(self, head=False)

            def do_HEAD(self) -> None:
                stand_in._answer(self, head=True)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def add(self, kind: str, repo_id: str, files: dict[str, bytes]) -> str:
        """Serve a ``model`` or ``dataset`` repository; returns the commit its ``main`` resolves to."""
        commit = hashlib.sha1(repo_id.encode() + b"".join(sorted(files.values()))).hexdigest()
        self.repos[kind, repo_id] = {"sha": commit, "files": files}
        return commit

    def add_directory(self, kind: str, repo_id: str, directory: Path) -> str:
        files = {str(p.relative_to(directory)): p.read_bytes() for p in directory.rglob("*") if p.is_file()}
        return self.add(kind, repo_id, files)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _answer(self, handler: BaseHTTPRequestHandler, *, head: bool) -> None:
        self.requests.append((handler.command, handler.path))
        parts = handler.path.split("?")[0].strip("/").split("/")

        def send(code: int, body: bytes = b"", headers: dict | None = None) -> None:
            handler.send_response(code)
            for key, value in (headers or {}).items():
                handler.send_header(key, value)
            handler.send_header("Content-Length", str(len(body)))
            handler.end_headers()
            if not head:
                handler.wfile.write(body)

        if parts[0] == "api" and len(parts) >= 4 and parts[1] in ("models", "datasets"):
            repo = self.repos.get((parts[1][:-1], "/".join(parts[2:4])))
            if repo is None:
                return send(404, b'{"error": "Repository not found"}', {"X-Error-Code": "RepoNotFound"})
            if len(parts) > 4 and parts[4] == "tree":  # /api/<kind>s/<repo>/tree/<commit>
                tree = [
                    {"type": "file", "path": name, "size": len(body), "oid": hashlib.sha1(body).hexdigest()}
                    for name, body in repo["files"].items()
                ]
                return send(200, json.dumps(tree).encode(), {"Content-Type": "application/json"})
            siblings = [{"rfilename": name} for name in repo["files"]]
            info = {"id": "/".join(parts[2:4]), "sha": repo["sha"], "siblings": siblings}
            return send(200, json.dumps(info).encode(), {"Content-Type": "application/json"})
        kind = "dataset" if parts[0] == "datasets" else "model"
        parts = parts[1:] if kind == "dataset" else parts
        repo = self.repos.get((kind, "/".join(parts[:2])))
        name = "/".join(parts[4:])
        if repo is None or len(parts) < 5 or parts[2] != "resolve" or name not in repo["files"]:
            return send(404, b"", {"X-Error-Code": "EntryNotFound"})
        body = repo["files"][name]  # /<repo>/resolve/<revision>/<file>
        return send(
            200, body, {"X-Repo-Commit": repo["sha"], "ETag": f'"{hashlib.sha256(body).hexdigest()}"'}
        )
