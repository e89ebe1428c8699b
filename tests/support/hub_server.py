"""The smallest local stand-in for the Hugging Face Hub that the suite's push / download round trips need.

The real ``huggingface_hub`` client (and diffusers on top of it) talks to this server over HTTP, so the tests run
the client's own code paths without a network. Only the standard library is used; the server listens on
127.0.0.1, keeps everything in memory, and serves just the requests that huggingface_hub 2.4 makes in the tests
(with ``HF_HUB_DISABLE_XET=1`` and telemetry off, as ``conftest.py`` sets):

* ``POST /api/repos/create``: a 409 answer carries the repo ``url``, which is what ``exist_ok=True`` reads.
* ``POST /api/validate-yaml``: the README.md front matter, always valid.
* ``POST /api/models/{id}/preupload/{rev}``: every file is "regular" (its bytes come base64-inline in the commit,
  never through LFS / Xet), with the git blob oid of the current remote file so the client skips unchanged files.
* ``POST /api/models/{id}/commit/{rev}[?create_pr=1]``: NDJSON ``header`` + ``file`` lines; ``create_pr`` commits
  on a new ``refs/pr/N`` branch.
* ``GET /api/models/{id}[/revision/{rev}]`` (sha, siblings) and ``GET /api/models/{id}/tree/{rev}?recursive=true``.
* ``HEAD`` / ``GET /{id}/resolve/{rev}/{path}`` with ``X-Repo-Commit`` and ``ETag`` (the client needs both).

404 answers carry ``X-Error-Code`` (``RepoNotFound`` / ``RevisionNotFound`` / ``EntryNotFound``), which the client
turns into its typed errors. Repo ids are always ``namespace/name``; only model repos exist; a revision is a
branch (``main``, ``refs/pr/N``) or a full commit sha. Anything else is answered 400 / 404 with a message naming
what is not served, so a client upgrade that changes its requests fails loudly here.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = ["DEFAULT_USER", "KINDS", "Commit", "LocalHubServer", "git_blob_oid"]

#: The token owner: ``create_repo("name")`` (no namespace) creates ``test-user/name``, as the Hub does.
DEFAULT_USER = "test-user"
#: Request kinds, for ``LocalHubServer.fail_next``.
KINDS = frozenset({"create", "validate-yaml", "preupload", "commit", "info", "tree", "resolve"})

_Answer = tuple[int, dict[str, str], bytes]


def git_blob_oid(data: bytes) -> str:
    """Git blob sha1 of ``data``: what the Hub calls a regular file's ``oid`` / ``ETag``.

    The client compares it with its own ``git_hash`` of a local file to skip unchanged files.
    """
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass(frozen=True)
class Commit:
    """One commit: a full snapshot of the repo's files."""

    oid: str
    title: str
    parent: str | None
    files: dict[str, bytes]


@dataclass
class _Repo:
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)  # "main", "refs/pr/1", ... -> commit oid
    pr_count: int = 0


@dataclass
class _Failure:
    kinds: frozenset[str]
    status: int
    remaining: int


class _HubError(Exception):
    """An error answered the way the Hub does, so the client raises the matching typed exception."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message = status, message
        self.headers = {**(headers or {}), **({"X-Error-Code": code} if code else {})}

    def answer(self) -> _Answer:
        # The client shows X-Error-Message in its exception; header values must be one latin-1 line.
        headers = {**self.headers, "X-Error-Message": self.message.encode("ascii", "replace").decode()}
        return _json({"error": self.message}, self.status, headers)


def _json(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> _Answer:
    return status, {"Content-Type": "application/json", **(headers or {})}, json.dumps(payload).encode()


class LocalHubServer:
    """In-memory Hub on ``127.0.0.1`` (a free port), serving in a background thread.

    Usage::

        with LocalHubServer() as hub:
            HfApi(endpoint=hub.url, token="hf_dummy").create_repo("name")

    Requests are served by several threads (the client downloads in parallel); one lock guards the store.
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._repos: dict[str, _Repo] = {}
        self._failures: list[_Failure] = []
        self._counter = itertools.count()
        self._httpd: _HTTPServer | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> LocalHubServer:
        """Bind a free port and serve in a daemon thread; returns ``self``."""
        self._httpd = _HTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.hub = self
        threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def stop(self) -> None:
        """Stop serving and close the listening socket."""
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> LocalHubServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """The endpoint, for ``HF_ENDPOINT`` or ``endpoint=`` (no trailing slash)."""
        if self._httpd is None:
            raise RuntimeError("the server is not started")
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    # ------------------------------------------------------------------ test controls and inspection

    def fail_next(self, count: int = 1, *, status: int = 500, kinds: Iterable[str] = ("commit",)) -> None:
        """Answer the next ``count`` requests of the given ``KINDS`` with ``status``.

        The client does not retry a failed ``commit`` POST (with Xet disabled), so a test sees a 500 at once;
        5xx answers to ``preupload``, ``tree`` or a first ``resolve`` are retried with ~23 s of backoff.
        """
        kinds = frozenset(kinds)
        if not kinds or not kinds <= KINDS or count < 1 or not 400 <= status <= 599:
            raise ValueError(f"fail_next needs count >= 1, a 4xx/5xx status and kinds among {sorted(KINDS)}")
        with self._lock:
            self._failures.append(_Failure(kinds, status, count))

    def head(self, repo_id: str, *, revision: str = "main") -> str:
        """The commit oid that ``revision`` points at."""
        with self._lock:
            return self._commit_at(self._repo(repo_id), revision).oid

    def files(self, repo_id: str, *, revision: str = "main") -> dict[str, bytes]:
        """``{path: content}`` at ``revision`` (a copy)."""
        with self._lock:
            return dict(self._commit_at(self._repo(repo_id), revision).files)

    def read_file(self, repo_id: str, path: str, *, revision: str = "main") -> bytes:
        """The content of one file at ``revision``."""
        return self.files(repo_id, revision=revision)[path]

    def commit_log(self, repo_id: str) -> list[Commit]:
        """Commits reachable from ``main``, newest first (the repo's initial empty commit is last)."""
        with self._lock:
            repo = self._repo(repo_id)
            log, oid = [], repo.branches["main"]
            while oid is not None:
                log.append(repo.commits[oid])
                oid = log[-1].parent
            return log

    # ------------------------------------------------------------------ routing

    def answer(self, method: str, raw_path: str, body: bytes) -> _Answer:
        """Answer one request (never raises: a server bug becomes a 500 the client reports)."""
        split = urlsplit(raw_path)
        # Split before unquoting: a revision such as "refs/pr/1" travels as one "refs%2Fpr%2F1" segment.
        segments = [unquote(s) for s in split.path.strip("/").split("/")]
        try:
            kind, handler = self._route(method, segments, parse_qs(split.query), body)
            with self._lock:
                self._inject_failure(kind)
                return handler()
        except _HubError as err:
            return err.answer()
        except Exception as err:  # noqa: BLE001 (surface the bug in the client's error rather than hang up)
            return _HubError(500, f"LocalHubServer bug: {err!r}").answer()

    def _route(
        self, method: str, seg: list[str], query: dict[str, list[str]], body: bytes
    ) -> tuple[str, Callable[[], _Answer]]:
        if method == "POST" and seg == ["api", "repos", "create"]:
            return "create", lambda: self._create(json.loads(body))
        if method == "POST" and seg == ["api", "validate-yaml"]:
            return "validate-yaml", lambda: _json({"errors": [], "warnings": []})
        if seg[:2] == ["api", "models"] and len(seg) >= 4:
            repo_id, rest = "/".join(seg[2:4]), seg[4:]
            if method == "GET" and not rest:
                return "info", lambda: self._info(repo_id, "main")
            if method == "GET" and len(rest) == 2 and rest[0] == "revision":
                return "info", lambda: self._info(repo_id, rest[1])
            if method == "GET" and len(rest) == 2 and rest[0] == "tree" and query.get("recursive") == ["true"]:
                return "tree", lambda: self._tree(repo_id, rest[1])
            create_pr = query.get("create_pr") == ["1"]
            if method == "POST" and len(rest) == 2 and rest[0] == "preupload":
                return "preupload", lambda: self._preupload(repo_id, rest[1], json.loads(body))
            if method == "POST" and len(rest) == 2 and rest[0] == "commit":
                return "commit", lambda: self._commit(repo_id, rest[1], create_pr, body)
        if method in {"GET", "HEAD"} and len(seg) >= 5 and seg[2] == "resolve":
            return "resolve", lambda: self._resolve(seg[0] + "/" + seg[1], seg[3], "/".join(seg[4:]))
        raise _HubError(404, f"LocalHubServer does not serve {method} /{'/'.join(seg)}")

    def _inject_failure(self, kind: str) -> None:
        for rule in self._failures:
            if kind in rule.kinds:
                rule.remaining -= 1
                if rule.remaining == 0:
                    self._failures.remove(rule)
                raise _HubError(rule.status, f"Injected failure ({rule.status}) for a {kind} request")

    # ------------------------------------------------------------------ store (the lock is held)

    def _repo(self, repo_id: str) -> _Repo:
        if repo_id not in self._repos:
            raise _HubError(404, f"Repository Not Found: {repo_id}", "RepoNotFound")
        return self._repos[repo_id]

    @staticmethod
    def _commit_at(repo: _Repo, revision: str) -> Commit:
        oid = repo.branches.get(revision, revision)
        if oid not in repo.commits:
            raise _HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return repo.commits[oid]

    def _new_commit(self, repo: _Repo, branch: str, parent: str | None, title: str, files: dict[str, bytes]) -> str:
        # The counter makes every oid unique, even for identical content and titles.
        oid = hashlib.sha1(f"{next(self._counter)} {title}".encode()).hexdigest()
        repo.commits[oid] = Commit(oid, title, parent, files)
        repo.branches[branch] = oid
        return oid

    # ------------------------------------------------------------------ handlers (the lock is held)

    def _create(self, payload: dict[str, Any]) -> _Answer:
        if payload.get("type", "model") != "model":
            raise _HubError(400, "LocalHubServer only has model repos")
        repo_id = f"{payload.get('organization') or DEFAULT_USER}/{payload['name']}"
        url = f"{self.url}/{repo_id}"
        if repo_id in self._repos:
            return _json({"error": "You already created this model repo", "url": url}, 409)
        self._repos[repo_id] = repo = _Repo()
        self._new_commit(repo, "main", None, "initial commit", {})
        return _json({"url": url})

    def _info(self, repo_id: str, revision: str) -> _Answer:
        commit = self._commit_at(self._repo(repo_id), revision)
        siblings = [{"rfilename": path} for path in sorted(commit.files)]
        return _json({"id": repo_id, "modelId": repo_id, "sha": commit.oid, "private": False, "siblings": siblings})

    def _tree(self, repo_id: str, revision: str) -> _Answer:
        files = self._commit_at(self._repo(repo_id), revision).files
        # Files only: snapshot_download keeps the file entries of a recursive listing, directories are not needed.
        entries = [
            {"type": "file", "path": p, "oid": git_blob_oid(d), "size": len(d)} for p, d in sorted(files.items())
        ]
        return _json(entries)

    def _preupload(self, repo_id: str, revision: str, payload: dict[str, Any]) -> _Answer:
        current = self._commit_at(self._repo(repo_id), revision).files
        answer = [
            {
                "path": item["path"],
                "uploadMode": "regular",
                "shouldIgnore": False,
                "oid": git_blob_oid(current[item["path"]]) if item["path"] in current else None,
            }
            for item in payload["files"]
        ]
        return _json({"files": answer})

    def _commit(self, repo_id: str, revision: str, create_pr: bool, body: bytes) -> _Answer:
        repo = self._repo(repo_id)
        if revision not in repo.branches:
            raise _HubError(404, f"Invalid rev id: {revision} is not a branch", "RevisionNotFound")
        base = repo.commits[repo.branches[revision]]
        header, *operations = [json.loads(line) for line in body.splitlines() if line.strip()]
        files = dict(base.files)
        for op in operations:
            if op["key"] != "file" or op["value"].get("encoding") != "base64":
                raise _HubError(400, f"LocalHubServer only takes base64 'file' operations, not {op['key']!r}")
            files[op["value"]["path"]] = base64.b64decode(op["value"]["content"])
        if create_pr:
            repo.pr_count += 1
            revision = f"refs/pr/{repo.pr_count}"
        oid = self._new_commit(repo, revision, base.oid, header["value"]["summary"], files)
        web = f"{self.url}/{repo_id}"
        pr_url = f"{web}/discussions/{repo.pr_count}" if create_pr else None
        return _json({"commitOid": oid, "commitUrl": f"{web}/commit/{oid}", "pullRequestUrl": pr_url})

    def _resolve(self, repo_id: str, revision: str, path: str) -> _Answer:
        commit = self._commit_at(self._repo(repo_id), revision)
        if path not in commit.files:
            # X-Repo-Commit lets the client cache the file's absence for this commit.
            raise _HubError(404, f"Entry not found: {path}", "EntryNotFound", {"X-Repo-Commit": commit.oid})
        data = commit.files[path]
        headers = {"Content-Type": "application/octet-stream", "X-Repo-Commit": commit.oid}
        return 200, {**headers, "ETag": f'"{git_blob_oid(data)}"'}, data


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True  # idle keep-alive connections must not block the interpreter's exit
    hub: LocalHubServer


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the client pools its connections
    # Headers and body go out in separate writes: with Nagle on, the client's delayed ACK costs ~40 ms a request.
    disable_nagle_algorithm = True
    server: _HTTPServer

    def _serve(self) -> None:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            status, headers, payload = _HubError(411, "LocalHubServer needs a Content-Length").answer()
            self.close_connection = True  # the unread body would corrupt the next request on this connection
        else:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            status, headers, payload = self.server.hub.answer(self.command, self.path, body)
        self.send_response(status)
        # A HEAD answer advertises the length of the body a GET would get: the client reads the size from it.
        for name, value in {**headers, "Content-Length": str(len(payload))}.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_HEAD = do_POST = _serve

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's signature)
        """Quiet: no line on stderr per request."""
