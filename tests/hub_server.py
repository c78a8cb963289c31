"""A local HTTP server on 127.0.0.1 that speaks the part of the Hub API an upload uses.

What huggingface_hub (2.x) sends for ``create_repo`` + ``create_commit``, and what this server
answers (read from huggingface_hub's ``hf_api.py`` / ``_commit_api.py``):

- ``POST /api/validate-yaml`` (JSON: the README.md text) -> accepted when huggingface_hub's
  own ``ModelCard`` parser reads its metadata (standing in for the Hub's validation);
- ``POST /api/repos/create`` (JSON: name, organization, visibility, type) -> ``{"url": ...}``,
  or 409 when the repo exists (``exist_ok=True`` accepts it);
- ``POST /api/models/{repo}/preupload/{revision}`` (JSON: files with path, size, base64
  sample) -> every file in ``"regular"`` upload mode, so that no LFS / Xet transfer is needed;
- ``POST /api/models/{repo}/commit/{revision}`` (NDJSON: a header line, then one ``file``
  line per file with base64 content) -> ``{"commitUrl", "commitOid"}``.

Anything else is answered 404 and recorded, so a test can assert that nothing else was asked.
Requests without ``Authorization: Bearer <token>`` are refused with 401. Not exercised: LFS and
Xet uploads of large files (the real Hub would ask for them for the weights), pull requests,
and the Hub's own validation of the card metadata.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class FakeHub:
    token: str
    repos: dict[str, dict[str, Any]] = field(default_factory=dict)  # repo -> {private, files}
    requests: list[tuple[str, str]] = field(default_factory=list)
    unknown: list[tuple[str, str]] = field(default_factory=list)
    commits: list[dict[str, Any]] = field(default_factory=list)
    validated: int = 0  # README.md front matters accepted by /api/validate-yaml
    url: str = ""

    def start(self) -> FakeHub:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def _send(self, code: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _body(self) -> bytes:
                n = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(n) if n else b""

            def do_GET(self) -> None:
                hub.requests.append(("GET", self.path))
                hub.unknown.append(("GET", self.path))
                self._send(404, {"error": "not implemented by the fake hub"})

            def do_POST(self) -> None:
                path = self.path.split("?")[0]
                hub.requests.append(("POST", path))
                body = self._body()
                if self.headers.get("Authorization") != f"Bearer {hub.token}":
                    self._send(401, {"error": "Invalid credentials in Authorization header"})
                    return
                if path == "/api/validate-yaml":
                    # the real Hub validates the card metadata server-side; here huggingface_hub's
                    # own parser stands in (front matter must be YAML, model-index well formed)
                    try:
                        from huggingface_hub import ModelCard

                        ModelCard(json.loads(body)["content"], ignore_metadata_errors=False)
                    except Exception as err:  # noqa: BLE001 - any parse error is a 400
                        self._send(400, {"errors": [{"message": str(err)}]})
                        return
                    hub.validated += 1
                    self._send(200, {"warnings": []})
                    return
                if path == "/api/repos/create":
                    req = json.loads(body)
                    repo = f"{req['organization']}/{req['name']}" if req.get("organization") \
                        else req["name"]
                    if repo in hub.repos:
                        self._send(409, {"error": "You already created this model repo",
                                         "url": f"{hub.url}/{repo}"})
                        return
                    hub.repos[repo] = {"private": req.get("visibility") == "private",
                                       "files": {}}
                    self._send(200, {"url": f"{hub.url}/{repo}", "name": repo})
                    return
                m = re.fullmatch(r"/api/models/(.+)/(preupload|commit)/([^/]+)", path)
                if m and m.group(1) in hub.repos:
                    repo, kind = m.group(1), m.group(2)
                    if kind == "preupload":
                        files = json.loads(body)["files"]
                        self._send(200, {"files": [{"path": f["path"], "uploadMode": "regular",
                                                    "shouldIgnore": False} for f in files]})
                        return
                    lines = [json.loads(x) for x in body.decode().splitlines() if x.strip()]
                    header = lines[0]["value"]
                    added = {}
                    for item in lines[1:]:
                        if item["key"] != "file" or item["value"].get("encoding") != "base64":
                            self._send(400, {"error": f"unsupported commit item {item['key']}"})
                            return
                        added[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                    hub.repos[repo]["files"].update(added)
                    oid = hashlib.sha1(body).hexdigest()
                    hub.commits.append({"repo": repo, "revision": m.group(3),
                                        "summary": header.get("summary"), "files": added})
                    self._send(200, {"commitUrl": f"{hub.url}/{repo}/commit/{oid}",
                                     "commitOid": oid, "pullRequestUrl": None})
                    return
                hub.unknown.append(("POST", path))
                self._send(404, {"error": "not implemented by the fake hub"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
