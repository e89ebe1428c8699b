"""A small local stand-in for the Hugging Face Hub, for tests that must not touch the network.

Why this exists: the test suite has to exercise the real ``huggingface_hub`` client code paths
(``create_repo``, ``upload_folder``, ``hf_hub_download``, ``snapshot_download``, diffusers'
``push_to_hub``) without internet access. Mocking the client would only test our mocks, so instead we
serve the subset of the Hub HTTP API the client actually calls, with ``HF_ENDPOINT`` pointed at us.

Only the standard library is used (``http.server`` + ``threading``), the server listens on
127.0.0.1 only, and all state lives in memory (repos -> commits -> ``{path: bytes}`` snapshots).

Behaviour that matters to the client (checked against huggingface_hub 2.4 sources):

* ``preupload`` answers ``uploadMode: "regular"`` for every file, so the client inlines file content
  base64-encoded in the commit NDJSON and never goes through LFS / Xet. It also returns the git blob
  oid of the current remote file so the client can skip unchanged files, exactly like the Hub.
* errors carry ``X-Error-Code`` (``RepoNotFound`` / ``RevisionNotFound`` / ``EntryNotFound``) which
  ``hf_raise_for_status`` turns into the typed exceptions.
* ``resolve`` answers ``X-Repo-Commit``, a quoted ``ETag`` (git blob oid) and ``Content-Length`` on
  both HEAD and GET; GET honours a single ``Range: bytes=a-b`` so interrupted downloads can resume.

Failures can be injected per request kind (``fail_next`` / ``fail_always`` / ``failing``) to test error
handling. Note that the client retries 5xx answers of some kinds with exponential backoff (1 s, 2 s,
4 s, 8 s, 8 s: ~23 s before giving up): ``preupload``, ``tree`` and ``commits`` (``http_backoff``),
``resolve`` when the file is not cached yet (``hf_hub_download`` retries its HEAD), and ``commit`` when
``hf_xet`` is enabled (the pipelined upload commits with ``retry_on_error=True``). ``commit`` on the
non-Xet path, ``create``, ``info`` and ``validate-yaml`` are not retried. So fail ``commit`` with 500
(with ``HF_HUB_DISABLE_XET=1``, as the fixtures set), or any kind with a 4xx, to keep tests fast.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import re
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = [
    "ALL_KINDS",
    "Commit",
    "DEFAULT_USER",
    "LocalHubServer",
    "RequestRecord",
    "git_blob_oid",
]

DEFAULT_USER = "test-user"
#: Upper bound on a request body; the commit NDJSON carries whole files base64-encoded.
MAX_BODY_BYTES = 512 * 1024 * 1024
#: Upper bound on the number of chunks of a chunked request body (bounds the read loop).
MAX_BODY_CHUNKS = 1_000_000
#: Upper bound on the ancestry walk of ``commits`` listings (bounds the loop on a corrupted graph).
MAX_HISTORY = 100_000

#: Every request kind the router knows; ``"*"`` in a failure rule matches all of them.
ALL_KINDS: tuple[str, ...] = (
    "whoami",
    "meta",
    "validate-yaml",
    "create",
    "delete",
    "info",
    "tree",
    "paths-info",
    "commits",
    "refs",
    "branch",
    "tag",
    "preupload",
    "commit",
    "resolve",
    "unknown",
)

_API_TYPE_SEGMENTS = {"models": "model", "datasets": "dataset", "spaces": "space"}
_WEB_TYPE_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
_REPO_ACTIONS = frozenset(
    {"revision", "tree", "preupload", "commit", "paths-info", "commits", "refs", "branch", "tag", "resolve"}
)
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_SHA_RE = re.compile(r"^[0-9a-f]{40}$")
_SHORT_SHA_RE = re.compile(r"^[0-9a-f]{7,39}$")
_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")


def git_blob_oid(data: bytes) -> str:
    """Git blob sha1 of ``data``: what the Hub calls a regular file's ``oid`` / ``ETag``.

    The client compares it with ``huggingface_hub.utils.sha.git_hash`` to skip unchanged files.
    """
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _hub_date(timestamp: float) -> str:
    """Format like the Hub (``2022-08-19T07:19:38.123Z``): the only format ``parse_datetime`` accepts."""
    millis = int((timestamp % 1) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(timestamp)) + f".{millis:03d}Z"


@dataclass(frozen=True)
class Commit:
    """One immutable commit: a full snapshot of the repo files, like a git tree."""

    oid: str
    parent: str | None
    title: str
    message: str
    date: str
    files: Mapping[str, bytes]


@dataclass
class _Repo:
    repo_id: str
    repo_type: str
    private: bool
    created_at: str
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    pr_count: int = 0

    def resolve(self, revision: str) -> Commit | None:
        """Branch, tag, full sha or unique short sha -> commit (``None`` if unknown)."""
        oid = self.branches.get(revision) or self.tags.get(revision)
        if oid is None and _SHA_RE.match(revision):
            oid = revision if revision in self.commits else None
        if oid is None and _SHORT_SHA_RE.match(revision):
            matches = [c for c in self.commits if c.startswith(revision)]
            oid = matches[0] if len(matches) == 1 else None
        return self.commits.get(oid) if oid is not None else None


@dataclass(frozen=True)
class RequestRecord:
    """What the client asked for; tests use it e.g. to prove an offline load made no request."""

    method: str
    path: str
    kind: str
    status: int


@dataclass
class _FailureRule:
    status: int
    kinds: frozenset[str]
    remaining: int | None  # None: until cleared

    def matches(self, kind: str) -> bool:
        return "*" in self.kinds or kind in self.kinds


@dataclass
class _Response:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


class _HubError(Exception):
    """An HTTP error answered the way the Hub does, so the client raises the matching typed error."""

    def __init__(
        self, status: int, message: str, *, code: str | None = None, extra: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.extra = dict(extra or {})


def _json_response(payload: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> _Response:
    body = json.dumps(payload).encode()
    return _Response(status, body, {"Content-Type": "application/json; charset=utf-8", **(headers or {})})


def _is_true(value: str | None) -> bool:
    return value is not None and value.lower() in {"1", "true", "yes"}


class LocalHubServer:
    """In-memory, Hub-compatible HTTP server on ``127.0.0.1`` (free port by default).

    Usage::

        with LocalHubServer() as hub:
            api = HfApi(endpoint=hub.url, token="dummy")
            ...

    Thread-safe: every store mutation happens under one lock, requests are served by a
    ``ThreadingHTTPServer`` (the client uploads / downloads with several threads).
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, user: str = DEFAULT_USER) -> None:
        if host not in {"127.0.0.1", "localhost", "::1"}:
            raise ValueError("LocalHubServer only listens on the loopback interface")
        self._host = host
        self._requested_port = port
        self.user = user
        self._lock = threading.RLock()
        self._repos: dict[tuple[str, str], _Repo] = {}
        self._failures: list[_FailureRule] = []
        self._log: deque[RequestRecord] = deque(maxlen=10_000)
        self._counter = itertools.count()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> LocalHubServer:
        """Bind and serve in a daemon thread; returns ``self`` so ``LocalHubServer().start()`` chains."""
        if self._httpd is not None:
            return self
        handler = _make_handler(self)
        httpd = ThreadingHTTPServer((self._host, self._requested_port), handler)
        httpd.daemon_threads = True  # keep-alive connections must not block interpreter exit
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), name="local-hub-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and release the port (idempotent)."""
        httpd, thread = self._httpd, self._thread
        self._httpd, self._thread = None, None
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> LocalHubServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("server not started")
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        """Base URL to use as ``HF_ENDPOINT`` (no trailing slash, as the client strips it anyway)."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}"

    # ------------------------------------------------------------------ failure injection

    def fail_next(self, count: int = 1, *, status: int = 500, kinds: Iterable[str] = ("commit",)) -> None:
        """Answer the next ``count`` requests of the given kinds with ``status``.

        Defaults to failing the ``commit`` POST: the client does not retry it, so a test sees the
        error at once. See ``ALL_KINDS`` for kind names (``"*"`` = any request).
        """
        if count < 1:
            raise ValueError("count must be >= 1")
        self._add_failure(_FailureRule(status, self._check_kinds(kinds), count))

    def fail_always(self, status: int = 500, *, kinds: Iterable[str] = ("commit",)) -> None:
        """Answer every request of the given kinds with ``status`` until ``clear_failures()``."""
        self._add_failure(_FailureRule(status, self._check_kinds(kinds), None))

    @contextmanager
    def failing(self, status: int = 500, *, kinds: Iterable[str] = ("commit",)) -> Iterator[None]:
        """``with hub.failing(500): ...`` -- ``fail_always`` scoped to a block."""
        rule = _FailureRule(status, self._check_kinds(kinds), None)
        self._add_failure(rule)
        try:
            yield
        finally:
            with self._lock:
                if rule in self._failures:
                    self._failures.remove(rule)

    def clear_failures(self) -> None:
        with self._lock:
            self._failures.clear()

    def _add_failure(self, rule: _FailureRule) -> None:
        if not 400 <= rule.status <= 599:
            raise ValueError("failure status must be a 4xx or 5xx code")
        with self._lock:
            self._failures.append(rule)

    @staticmethod
    def _check_kinds(kinds: Iterable[str]) -> frozenset[str]:
        if isinstance(kinds, str):
            kinds = (kinds,)
        result = frozenset(kinds)
        unknown = result - set(ALL_KINDS) - {"*"}
        if unknown or not result:
            raise ValueError(f"unknown request kinds {sorted(unknown)}; expected some of {ALL_KINDS} or '*'")
        return result

    def _take_failure(self, kind: str) -> int | None:
        with self._lock:
            for rule in self._failures:
                if rule.matches(kind):
                    if rule.remaining is not None:
                        rule.remaining -= 1
                        if rule.remaining <= 0:
                            self._failures.remove(rule)
                    return rule.status
        return None

    # ------------------------------------------------------------------ request log

    @property
    def requests(self) -> list[RequestRecord]:
        """Requests served so far (most recent last, at most 10 000 kept)."""
        with self._lock:
            return list(self._log)

    def clear_requests(self) -> None:
        with self._lock:
            self._log.clear()

    def reset(self) -> None:
        """Forget every repo, failure rule and logged request (the server keeps running)."""
        with self._lock:
            self._repos.clear()
            self._failures.clear()
            self._log.clear()

    # ------------------------------------------------------------------ direct store access (test setup)

    def create_repo(
        self, repo_id: str, *, repo_type: str = "model", private: bool = False, exist_ok: bool = False
    ) -> str:
        """Create a repo with one empty initial commit on ``main``; returns the full repo id.

        A bare ``name`` gets the server user's namespace, like the Hub does for ``create_repo("name")``.
        """
        full_id = repo_id if "/" in repo_id else f"{self.user}/{repo_id}"
        self._validate_repo_id(full_id)
        with self._lock:
            key = (repo_type, full_id)
            if key in self._repos:
                if exist_ok:
                    return full_id
                raise ValueError(f"repo {repo_type}:{full_id} already exists")
            self._create_repo_locked(full_id, repo_type, private)
        return full_id

    def add_repo(
        self,
        repo_id: str,
        files: Mapping[str, bytes | str],
        *,
        repo_type: str = "model",
        message: str = "Add files",
    ) -> str:
        """Seed a repo (any id, including a bare canonical ``"name"``) with ``files``; returns the commit oid.

        Unlike ``create_repo`` the id is kept as given, so downloads of un-namespaced ids can be tested.
        """
        self._validate_repo_id(repo_id)
        with self._lock:
            if (repo_type, repo_id) not in self._repos:
                self._create_repo_locked(repo_id, repo_type, False)
        return self.commit(repo_id, files, repo_type=repo_type, message=message)

    def commit(
        self,
        repo_id: str,
        files: Mapping[str, bytes | str] | None = None,
        *,
        deletions: Iterable[str] = (),
        repo_type: str = "model",
        branch: str = "main",
        message: str = "Update files",
    ) -> str:
        """Commit ``files`` (str is UTF-8 encoded) and delete ``deletions`` on ``branch``; returns the oid."""
        with self._lock:
            repo = self._get_repo(repo_type, repo_id)
            head = self._get_branch_head(repo, branch)
            snapshot = dict(head.files)
            for path in deletions:
                snapshot.pop(path, None)
            for path, content in (files or {}).items():
                snapshot[path] = content.encode() if isinstance(content, str) else bytes(content)
            return self._new_commit(repo, branch, head, snapshot, message, "").oid

    def repo_exists(self, repo_id: str, *, repo_type: str = "model") -> bool:
        with self._lock:
            return (repo_type, repo_id) in self._repos

    def head(self, repo_id: str, *, revision: str = "main", repo_type: str = "model") -> str:
        """Commit oid that ``revision`` points at."""
        return self._snapshot(repo_id, revision, repo_type).oid

    def files(self, repo_id: str, *, revision: str = "main", repo_type: str = "model") -> dict[str, bytes]:
        """``{path: content}`` at ``revision`` (a copy)."""
        return dict(self._snapshot(repo_id, revision, repo_type).files)

    def read_file(self, repo_id: str, path: str, *, revision: str = "main", repo_type: str = "model") -> bytes:
        return self._snapshot(repo_id, revision, repo_type).files[path]

    def commit_log(self, repo_id: str, *, revision: str = "main", repo_type: str = "model") -> list[Commit]:
        """Commits reachable from ``revision``, newest first (the initial empty commit is last)."""
        with self._lock:
            repo = self._get_repo(repo_type, repo_id)
            return self._history(repo, self._resolve(repo, revision))

    def _snapshot(self, repo_id: str, revision: str, repo_type: str) -> Commit:
        with self._lock:
            return self._resolve(self._get_repo(repo_type, repo_id), revision)

    # ------------------------------------------------------------------ store internals (lock held)

    @staticmethod
    def _validate_repo_id(repo_id: str) -> None:
        parts = repo_id.split("/")
        if len(parts) > 2 or not all(_NAME_RE.match(p) for p in parts):
            raise _HubError(400, f"Invalid repo id {repo_id!r}")

    def _create_repo_locked(self, repo_id: str, repo_type: str, private: bool) -> _Repo:
        now = time.time()
        repo = _Repo(repo_id=repo_id, repo_type=repo_type, private=private, created_at=_hub_date(now))
        self._repos[(repo_type, repo_id)] = repo
        initial = self._make_commit(repo, None, {}, "initial commit", "")
        repo.branches["main"] = initial.oid
        return repo

    def _make_commit(
        self, repo: _Repo, parent: Commit | None, files: dict[str, bytes], title: str, message: str
    ) -> Commit:
        # A counter makes every commit unique even with identical content, message and timestamp.
        seed = json.dumps(
            [
                repo.repo_type,
                repo.repo_id,
                parent.oid if parent else None,
                title,
                message,
                next(self._counter),
            ]
        ).encode()
        digest = hashlib.sha1(seed)
        for path in sorted(files):
            digest.update(path.encode() + b"\0" + git_blob_oid(files[path]).encode())
        commit = Commit(
            oid=digest.hexdigest(),
            parent=parent.oid if parent else None,
            title=title,
            message=message,
            date=_hub_date(time.time()),
            files=dict(files),
        )
        repo.commits[commit.oid] = commit
        return commit

    def _new_commit(
        self, repo: _Repo, branch: str, parent: Commit, files: dict[str, bytes], title: str, message: str
    ) -> Commit:
        commit = self._make_commit(repo, parent, files, title, message)
        repo.branches[branch] = commit.oid
        return commit

    def _get_repo(self, repo_type: str, repo_id: str) -> _Repo:
        repo = self._repos.get((repo_type, repo_id))
        if repo is None:
            raise _HubError(404, f"Repository Not Found: {repo_type} {repo_id}", code="RepoNotFound")
        return repo

    @staticmethod
    def _resolve(repo: _Repo, revision: str) -> Commit:
        commit = repo.resolve(revision)
        if commit is None:
            raise _HubError(404, f"Invalid rev id: {revision}", code="RevisionNotFound")
        return commit

    @staticmethod
    def _get_branch_head(repo: _Repo, branch: str) -> Commit:
        oid = repo.branches.get(branch)
        if oid is None:
            if repo.resolve(branch) is not None:
                raise _HubError(400, f"Revision {branch!r} is not a branch: commits can only target a branch")
            raise _HubError(404, f"Invalid rev id: {branch}", code="RevisionNotFound")
        return repo.commits[oid]

    @staticmethod
    def _history(repo: _Repo, start: Commit) -> list[Commit]:
        history: list[Commit] = []
        commit: Commit | None = start
        while commit is not None and len(history) < MAX_HISTORY:
            history.append(commit)
            commit = repo.commits.get(commit.parent) if commit.parent else None
        return history

    def _repo_web_url(self, repo: _Repo) -> str:
        return f"{self.url}/{_WEB_TYPE_PREFIX.get(repo.repo_type, '')}{repo.repo_id}"

    # ------------------------------------------------------------------ HTTP dispatch

    def _handle(self, method: str, raw_path: str, headers: Mapping[str, str], body: bytes) -> tuple[str, _Response]:
        """Route one request (``headers`` keys lower-cased); returns ``(kind, response)``. Never raises."""
        split = urlsplit(raw_path)
        query = parse_qs(split.query, keep_blank_values=True)
        segments = [unquote(s) for s in split.path.split("/")[1:]]
        while segments and segments[-1] == "":
            segments.pop()
        kind = "unknown"
        try:
            kind, handler = self._route(method, segments)
            status = self._take_failure(kind)
            if status is not None:
                raise _HubError(status, f"Injected failure ({status}) for {kind} request")
            return kind, handler(query, headers, body)
        except _HubError as err:
            return kind, self._error_response(err)
        except Exception as err:  # a server bug: surface it to the client instead of hanging up
            return kind, self._error_response(_HubError(500, f"LocalHubServer bug: {err!r}"))

    def _error_response(self, err: _HubError) -> _Response:
        extra = dict(err.extra)
        if err.code is not None:
            extra["X-Error-Code"] = err.code
        # Header values must be latin-1; keep the message ASCII and on one line.
        extra["X-Error-Message"] = err.message.encode("ascii", "replace").decode().replace("\n", " ")
        return _json_response({"error": err.message}, err.status, extra)

    def _route(self, method: str, seg: list[str]) -> tuple[str, Any]:
        """Map ``(method, path segments)`` to a request kind and a bound handler."""
        if seg[:1] == ["api"]:
            rest = seg[1:]
            if rest == ["whoami-v2"] and method == "GET":
                return "whoami", self._api_whoami
            if rest == ["agent-harnesses"] and method == "GET":
                return "meta", lambda *_: _json_response({"standardEnvVars": [], "harnesses": {}})
            if rest == ["validate-yaml"] and method == "POST":
                return "validate-yaml", lambda *_: _json_response({"errors": [], "warnings": []})
            if rest == ["repos", "create"] and method == "POST":
                return "create", self._api_create_repo
            if rest == ["repos", "delete"] and method == "DELETE":
                return "delete", self._api_delete_repo
            if rest and rest[0] in _API_TYPE_SEGMENTS and len(rest) >= 2:
                return self._route_repo_api(method, _API_TYPE_SEGMENTS[rest[0]], rest[1:])
            raise _HubError(404, f"Unknown API route /{'/'.join(seg)}")
        return self._route_resolve(method, seg)

    def _split_repo_id(self, repo_type: str, seg: list[str]) -> tuple[str, list[str]]:
        """Split ``[ns, name, action, ...]`` or ``[name, action, ...]`` into ``(repo_id, rest)``.

        Both forms are legal (canonical repos have no namespace), so prefer an existing repo, then
        fall back on whether the second segment is an action keyword.
        """
        with self._lock:
            if len(seg) >= 2 and (repo_type, f"{seg[0]}/{seg[1]}") in self._repos:
                return f"{seg[0]}/{seg[1]}", seg[2:]
            if (repo_type, seg[0]) in self._repos:
                return seg[0], seg[1:]
        if len(seg) >= 2 and seg[1] not in _REPO_ACTIONS:
            return f"{seg[0]}/{seg[1]}", seg[2:]
        return seg[0], seg[1:]

    def _route_repo_api(self, method: str, repo_type: str, seg: list[str]) -> tuple[str, Any]:
        repo_id, rest = self._split_repo_id(repo_type, seg)
        action = rest[0] if rest else None

        def bind(kind: str, fn: Any, *args: Any) -> tuple[str, Any]:
            return kind, lambda query, headers, body: fn(repo_type, repo_id, *args, query, headers, body)

        if action is None and method == "GET":
            return bind("info", self._api_info, "main")
        if action == "revision" and len(rest) == 2 and method == "GET":
            return bind("info", self._api_info, rest[1])
        if action == "tree" and len(rest) >= 2 and method == "GET":
            return bind("tree", self._api_tree, rest[1], "/".join(rest[2:]))
        if action == "paths-info" and len(rest) == 2 and method == "POST":
            return bind("paths-info", self._api_paths_info, rest[1])
        if action == "commits" and len(rest) == 2 and method == "GET":
            return bind("commits", self._api_commits, rest[1])
        if action == "refs" and len(rest) == 1 and method == "GET":
            return bind("refs", self._api_refs)
        if action == "branch" and len(rest) == 2 and method in {"POST", "DELETE"}:
            return bind("branch", self._api_branch, rest[1], method)
        if action == "tag" and len(rest) == 2 and method in {"POST", "DELETE"}:
            return bind("tag", self._api_tag, rest[1], method)
        if action == "preupload" and len(rest) == 2 and method == "POST":
            return bind("preupload", self._api_preupload, rest[1])
        if action == "commit" and len(rest) == 2 and method == "POST":
            return bind("commit", self._api_commit, rest[1])
        raise _HubError(404, f"Unknown repo API route {method} {action!r}")

    def _route_resolve(self, method: str, seg: list[str]) -> tuple[str, Any]:
        repo_type = "model"
        if seg and seg[0] in _API_TYPE_SEGMENTS:
            repo_type = _API_TYPE_SEGMENTS[seg[0]]
            seg = seg[1:]
        if method in {"GET", "HEAD"} and len(seg) >= 3:
            repo_id, rest = self._split_repo_id(repo_type, seg)
            if len(rest) >= 3 and rest[0] == "resolve":
                revision, path = rest[1], "/".join(rest[2:])
                return "resolve", lambda query, headers, body: self._resolve_file(
                    repo_type, repo_id, revision, path, method, headers
                )
        raise _HubError(404, f"Unknown route {method} /{'/'.join(seg)}")

    # ------------------------------------------------------------------ API handlers

    @staticmethod
    def _json_body(body: bytes) -> dict[str, Any]:
        try:
            payload = json.loads(body or b"{}")
        except ValueError as err:
            raise _HubError(400, f"Invalid JSON body: {err}") from err
        if not isinstance(payload, dict):
            raise _HubError(400, "JSON body must be an object")
        return payload

    def _api_whoami(self, *_: Any) -> _Response:
        return _json_response(
            {
                "type": "user",
                "id": "0" * 24,
                "name": self.user,
                "fullname": "Test User",
                "email": None,
                "emailVerified": False,
                "isPro": False,
                "orgs": [],
                "auth": {"type": "access_token", "accessToken": {"displayName": "test", "role": "write"}},
            }
        )

    def _api_create_repo(self, _query: Any, _headers: Any, body: bytes) -> _Response:
        payload = self._json_body(body)
        name = payload.get("name")
        if not isinstance(name, str) or not name:
            raise _HubError(400, "Missing repo name")
        organization = payload.get("organization") or self.user
        repo_type = payload.get("type") or "model"
        if repo_type not in _WEB_TYPE_PREFIX:
            raise _HubError(400, f"Unsupported repo type {repo_type!r}")
        full_id = f"{organization}/{name}"
        self._validate_repo_id(full_id)
        private = payload.get("visibility") == "private" or bool(payload.get("private"))
        with self._lock:
            existing = self._repos.get((repo_type, full_id))
            if existing is not None:
                # The client reads "url" from this 409 body when exist_ok=True (hf_api.py create_repo).
                return _json_response(
                    {"error": "You already created this model repo", "url": self._repo_web_url(existing)}, 409
                )
            repo = self._create_repo_locked(full_id, repo_type, private)
            return _json_response({"url": self._repo_web_url(repo), "name": full_id, "id": full_id})

    def _api_delete_repo(self, _query: Any, _headers: Any, body: bytes) -> _Response:
        payload = self._json_body(body)
        organization = payload.get("organization") or self.user
        full_id = f"{organization}/{payload.get('name')}"
        repo_type = payload.get("type") or "model"
        with self._lock:
            self._get_repo(repo_type, full_id)
            del self._repos[(repo_type, full_id)]
        return _Response(200, b"", {"Content-Type": "text/plain"})

    def _api_info(self, repo_type: str, repo_id: str, revision: str, *_: Any) -> _Response:
        with self._lock:
            repo = self._get_repo(repo_type, repo_id)
            commit = self._resolve(repo, revision)
            payload: dict[str, Any] = {
                "_id": hashlib.sha1(f"{repo_type}/{repo_id}".encode()).hexdigest()[:24],
                "id": repo_id,
                "author": repo_id.split("/")[0] if "/" in repo_id else None,
                "sha": commit.oid,
                "lastModified": commit.date,
                "createdAt": repo.created_at,
                "private": repo.private,
                "gated": False,
                "disabled": False,
                "downloads": 0,
                "likes": 0,
                "tags": [],
                "siblings": [
                    {"rfilename": path, "size": len(data), "blobId": git_blob_oid(data)}
                    for path, data in sorted(commit.files.items())
                ],
                "usedStorage": sum(len(d) for d in commit.files.values()),
            }
            if repo_type == "model":
                payload["modelId"] = repo_id
            return _json_response(payload)

    @staticmethod
    def _dirs_of(files: Iterable[str]) -> set[str]:
        dirs: set[str] = set()
        for path in files:
            parts = path.split("/")[:-1]
            for i in range(1, len(parts) + 1):
                dirs.add("/".join(parts[:i]))
        return dirs

    @staticmethod
    def _tree_entry(path: str, files: Mapping[str, bytes], is_dir: bool) -> dict[str, Any]:
        if is_dir:
            return {
                "type": "directory",
                "oid": hashlib.sha1(b"tree " + path.encode()).hexdigest(),
                "path": path,
                "size": 0,
            }
        data = files[path]
        return {"type": "file", "oid": git_blob_oid(data), "size": len(data), "path": path}

    def _api_tree(
        self, repo_type: str, repo_id: str, revision: str, base: str, query: Mapping[str, list[str]], *_: Any
    ) -> _Response:
        recursive = _is_true((query.get("recursive") or [None])[0])
        with self._lock:
            commit = self._resolve(self._get_repo(repo_type, repo_id), revision)
            files = commit.files
        dirs = self._dirs_of(files)
        if base and base not in dirs:
            raise _HubError(404, f"Path {base!r} not found in {repo_id}@{revision}", code="EntryNotFound")
        prefix = f"{base}/" if base else ""
        entries: list[dict[str, Any]] = []
        for path in sorted(dirs):
            if path.startswith(prefix) and (recursive or "/" not in path[len(prefix) :]):
                entries.append(self._tree_entry(path, files, True))
        for path in sorted(files):
            if path.startswith(prefix) and (recursive or "/" not in path[len(prefix) :]):
                entries.append(self._tree_entry(path, files, False))
        return _json_response(entries)

    def _api_paths_info(
        self, repo_type: str, repo_id: str, revision: str, _query: Any, _headers: Any, body: bytes
    ) -> _Response:
        form = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
        paths = form.get("paths", [])
        if not paths and body.lstrip().startswith(b"{"):
            paths = list(self._json_body(body).get("paths", []))
        with self._lock:
            files = self._resolve(self._get_repo(repo_type, repo_id), revision).files
        dirs = self._dirs_of(files)
        entries = [
            self._tree_entry(p.strip("/"), files, p.strip("/") in dirs)
            for p in paths
            if p.strip("/") in files or p.strip("/") in dirs
        ]
        return _json_response(entries)

    def _api_commits(self, repo_type: str, repo_id: str, revision: str, *_: Any) -> _Response:
        with self._lock:
            repo = self._get_repo(repo_type, repo_id)
            history = self._history(repo, self._resolve(repo, revision))
        return _json_response(
            [
                {
                    "id": c.oid,
                    "title": c.title,
                    "message": c.message,
                    "authors": [{"user": self.user}],
                    "date": c.date,
                }
                for c in history
            ]
        )

    def _api_refs(self, repo_type: str, repo_id: str, *_: Any) -> _Response:
        with self._lock:
            repo = self._get_repo(repo_type, repo_id)
            branches = [
                {"name": n, "ref": f"refs/heads/{n}", "targetCommit": o}
                for n, o in sorted(repo.branches.items())
                if not n.startswith("refs/pr/")
            ]
            prs = [
                {"name": n, "ref": n, "targetCommit": o}
                for n, o in sorted(repo.branches.items())
                if n.startswith("refs/pr/")
            ]
            tags = [{"name": n, "ref": f"refs/tags/{n}", "targetCommit": o} for n, o in sorted(repo.tags.items())]
        return _json_response({"branches": branches, "converts": [], "tags": tags, "pullRequests": prs})

    def _api_branch(
        self, repo_type: str, repo_id: str, branch: str, method: str, _query: Any, _headers: Any, body: bytes
    ) -> _Response:
        with self._lock:
            repo = self._get_repo(repo_type, repo_id)
            if method == "DELETE":
                if branch not in repo.branches or branch == "main":
                    raise _HubError(404, f"Branch {branch!r} cannot be deleted", code="RevisionNotFound")
                del repo.branches[branch]
                return _json_response({})
            if branch.startswith("refs/") or not branch:
                raise _HubError(400, f"Invalid branch name {branch!r}")
            if branch in repo.branches:
                raise _HubError(409, f"Branch {branch!r} already exists")
            start = self._json_body(body).get("startingPoint") or "main"
            repo.branches[branch] = self._resolve(repo, start).oid
        return _json_response({})

    def _api_tag(
        self,
        repo_type: str,
        repo_id: str,
        revision: str,
        method: str,
        _query: Any,
        _headers: Any,
        body: bytes,
    ) -> _Response:
        with self._lock:
            repo = self._get_repo(repo_type, repo_id)
            if method == "DELETE":  # DELETE /tag/{tag}
                if repo.tags.pop(revision, None) is None:
                    raise _HubError(404, f"Tag {revision!r} not found", code="RevisionNotFound")
                return _json_response({})
            tag = self._json_body(body).get("tag")
            if not isinstance(tag, str) or not tag:
                raise _HubError(400, "Missing tag name")
            if tag in repo.tags:
                raise _HubError(409, f"Tag {tag!r} already exists")
            repo.tags[tag] = self._resolve(repo, revision).oid
        return _json_response({})

    def _api_preupload(
        self,
        repo_type: str,
        repo_id: str,
        revision: str,
        query: Mapping[str, list[str]],
        _headers: Any,
        body: bytes,
    ) -> _Response:
        files = self._json_body(body).get("files")
        if not isinstance(files, list):
            raise _HubError(400, "Expected a 'files' list")
        create_pr = _is_true((query.get("create_pr") or [None])[0])
        with self._lock:
            repo = self._get_repo(repo_type, repo_id)
            head = self._resolve(repo, revision) if create_pr else self._get_branch_head(repo, revision)
            answer = []
            for item in files:
                if not isinstance(item, dict) or not isinstance(item.get("path"), str):
                    raise _HubError(400, "Each file needs a 'path'")
                current = head.files.get(item["path"])
                answer.append(
                    {
                        "path": item["path"],
                        # "regular": content is inlined in the commit, no LFS/Xet round trip needed.
                        "uploadMode": "regular",
                        "shouldIgnore": False,
                        "oid": git_blob_oid(current) if current is not None else None,
                    }
                )
            return _json_response({"files": answer, "commitOid": head.oid})

    def _api_commit(
        self,
        repo_type: str,
        repo_id: str,
        revision: str,
        query: Mapping[str, list[str]],
        _headers: Any,
        body: bytes,
    ) -> _Response:
        operations = self._parse_ndjson(body)
        header = next((op["value"] for op in operations if op.get("key") == "header"), None)
        if not isinstance(header, dict) or not header.get("summary"):
            raise _HubError(400, "Commit NDJSON must start with a header carrying a 'summary'")
        create_pr = _is_true((query.get("create_pr") or [None])[0])
        with self._lock:
            repo = self._get_repo(repo_type, repo_id)
            if create_pr:
                base = self._resolve(repo, revision)
                repo.pr_count += 1
                target = f"refs/pr/{repo.pr_count}"
                repo.branches[target] = base.oid
            else:
                target = revision
                base = self._get_branch_head(repo, target)
            parent_commit = header.get("parentCommit")
            if parent_commit and parent_commit != base.oid:
                raise _HubError(412, f"Parent commit {parent_commit} is not the head of {target} ({base.oid})")
            snapshot = self._apply_operations(dict(base.files), operations)
            commit = self._new_commit(
                repo, target, base, snapshot, str(header["summary"]), str(header.get("description") or "")
            )
            web_url = self._repo_web_url(repo)
        pr_url = f"{web_url}/discussions/{target.rsplit('/', 1)[1]}" if create_pr else None
        return _json_response(
            {
                "success": True,
                "commitOid": commit.oid,
                "commitUrl": f"{web_url}/commit/{commit.oid}",
                "pullRequestUrl": pr_url,
                "hookOutput": "",
            }
        )

    @staticmethod
    def _parse_ndjson(body: bytes) -> list[dict[str, Any]]:
        operations = []
        for number, line in enumerate(body.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except ValueError as err:
                raise _HubError(400, f"Invalid NDJSON line {number}: {err}") from err
            if not isinstance(item, dict) or "key" not in item or not isinstance(item.get("value"), dict):
                raise _HubError(400, f"NDJSON line {number} must be {{'key': ..., 'value': {{...}}}}")
            operations.append(item)
        return operations

    @staticmethod
    def _apply_operations(snapshot: dict[str, bytes], operations: list[dict[str, Any]]) -> dict[str, bytes]:
        for op in operations:
            key, value = op["key"], op["value"]
            path = value.get("path")
            if key == "header":
                continue
            if not isinstance(path, str) or not path or path.startswith("/") or ".." in path.split("/"):
                raise _HubError(400, f"Invalid path in {key} operation: {path!r}")
            if key == "file":
                content = value.get("content", "")
                if value.get("encoding") == "base64":
                    try:
                        snapshot[path] = base64.b64decode(content, validate=True)
                    except ValueError as err:
                        raise _HubError(400, f"Invalid base64 content for {path}") from err
                else:
                    snapshot[path] = str(content).encode()
            elif key == "deletedFile":
                if snapshot.pop(path, None) is None:
                    raise _HubError(404, f"A file with this name doesn't exist: {path}", code="EntryNotFound")
            elif key == "deletedFolder":
                prefix = path.rstrip("/") + "/"
                doomed = [p for p in snapshot if p.startswith(prefix)]
                if not doomed:
                    raise _HubError(404, f"A folder with this name doesn't exist: {path}", code="EntryNotFound")
                for p in doomed:
                    del snapshot[p]
            elif key == "lfsFile":
                raise _HubError(
                    400,
                    "LocalHubServer does not store LFS objects: preupload always answers uploadMode=regular",
                )
            else:
                raise _HubError(400, f"Unknown commit operation {key!r}")
        return snapshot

    def _resolve_file(
        self, repo_type: str, repo_id: str, revision: str, path: str, method: str, headers: Mapping[str, str]
    ) -> _Response:
        with self._lock:
            commit = self._resolve(self._get_repo(repo_type, repo_id), revision)
        data = commit.files.get(path)
        if data is None:
            # X-Repo-Commit lets the client cache the file's absence (.no_exist) for this commit.
            raise _HubError(404, f"Entry not found: {path}", code="EntryNotFound", extra={"X-Repo-Commit": commit.oid})
        response_headers = {
            "Content-Type": "application/octet-stream",
            "X-Repo-Commit": commit.oid,
            "ETag": f'"{git_blob_oid(data)}"',
            "Accept-Ranges": "bytes",
            "Content-Disposition": f'inline; filename="{path.rsplit("/", 1)[-1]}"',
        }
        range_header = headers.get("range")
        if method == "GET" and range_header:
            match = _RANGE_RE.match(range_header.strip())
            if match and (match.group(1) or match.group(2)):
                size = len(data)
                if match.group(1):
                    start = int(match.group(1))
                    end = min(int(match.group(2)), size - 1) if match.group(2) else size - 1
                else:  # suffix range: last N bytes
                    start, end = max(size - int(match.group(2)), 0), size - 1
                if start >= size or start > end:
                    raise _HubError(
                        416,
                        f"Range not satisfiable: {range_header}",
                        extra={"Content-Range": f"bytes */{size}"},
                    )
                response_headers["Content-Range"] = f"bytes {start}-{end}/{size}"
                return _Response(206, data[start : end + 1], response_headers)
        return _Response(200, data, response_headers)

    # ------------------------------------------------------------------ logging

    def _record(self, method: str, path: str, kind: str, status: int) -> None:
        with self._lock:
            self._log.append(RequestRecord(method, path, kind, status))


def _make_handler(server: LocalHubServer) -> type[BaseHTTPRequestHandler]:
    """Build a request handler class bound to ``server`` (``http.server`` instantiates it per request)."""

    class _Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: the client pools connections
        timeout = 30  # idle keep-alive sockets are closed after this many seconds
        # Headers and body go out in separate writes: with Nagle on, the client's delayed ACK costs
        # ~40 ms per request.
        disable_nagle_algorithm = True
        server_version = "LocalHubServer/1.0"

        def _read_body(self) -> bytes:
            if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
                chunks: list[bytes] = []
                total = 0
                for _ in range(MAX_BODY_CHUNKS):
                    size_line = self.rfile.readline(1024)
                    size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
                    if size == 0:
                        # Trailer section ends with an empty line; bounded like everything else.
                        for _ in range(1024):
                            if self.rfile.readline(65536) in (b"\r\n", b"\n", b""):
                                break
                        return b"".join(chunks)
                    total += size
                    if total > MAX_BODY_BYTES:
                        raise _HubError(413, "Request body too large")
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline(16)  # CRLF after each chunk
                raise _HubError(413, "Too many chunks in request body")
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY_BYTES:
                raise _HubError(413, "Request body too large")
            return self.rfile.read(length) if length > 0 else b""

        def _dispatch(self) -> None:
            method = self.command
            try:
                body = self._read_body()
            except (_HubError, ValueError) as err:
                status = err.status if isinstance(err, _HubError) else 400
                self.close_connection = True  # the body was not consumed: the stream is out of sync
                server._record(method, self.path, "unknown", status)
                self._send(method, server._error_response(_HubError(status, str(err))))
                return
            headers = {name.lower(): value for name, value in self.headers.items()}
            kind, response = server._handle(method, self.path, headers, body)
            # Log before answering: once the client has its response, ``requests`` already shows it.
            server._record(method, self.path, kind, response.status)
            self._send(method, response)

        def _send(self, method: str, response: _Response) -> None:
            self.send_response(response.status)
            for name, value in response.headers.items():
                self.send_header(name, value)
            # HEAD must advertise the length of the body a GET would return (the client reads it).
            self.send_header("Content-Length", str(len(response.body)))
            self.end_headers()
            if method != "HEAD" and response.body:
                self.wfile.write(response.body)

        do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = _dispatch

        def log_message(self, format: str, *args: Any) -> None:
            """Silence per-request stderr logging; ``LocalHubServer.requests`` has the log."""

    return _Handler
