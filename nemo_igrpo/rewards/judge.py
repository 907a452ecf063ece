"""Generative judge reward: a model behind an OpenAI-compatible ``/chat/completions`` endpoint grades each response.

Reply format the judge must follow (it is told so in the prompt): free-form reasoning, then a final line
``SCORE: <number>`` with the number in [0, 1]. The LAST ``SCORE:`` in the reply counts, so the judge may think aloud.
A reply without a parsable score, a score outside [0, 1], or a request that still fails after the retries scores 0
and increments ``stats.errors``: the judge can only withhold reward, never crash the step.

The endpoint is not trusted to behave. Each request has a total deadline (``timeout_s``, from connecting to the last
byte: a server that trickles its reply is cut off), a reply-size cap (``max_reply_bytes``, read in chunks), and no
redirect is followed: a 3xx would send the API key, and take the score, from whatever server the ``Location`` names.
A circuit breaker stops calling an endpoint after ``breaker_failures`` failed requests in a row: scores are 0 without
a request (``stats.skipped``), logged once, until ``breaker_cooldown_s`` has passed and one request probes it again.

Standard library only (``http.client``): the judge runs inside the trainer and must not pull in an HTTP client stack.
The API key is read from the environment variable named in ``JudgeConfig.api_key_env`` at request time; it is never
stored in an attribute that a repr or a config dump would show, and never logged.
"""

from __future__ import annotations

import http.client
import json
import logging
import math
import os
import re
import ssl
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Sequence
from urllib.parse import urlsplit

from nemo_igrpo.rewards.config import JudgeConfig

log = logging.getLogger(__name__)

SYSTEM_PROMPT = (
    "You are a strict grader of math solutions. You are given a problem, its reference answer and a candidate "
    "response. Decide whether the response's final answer is mathematically equivalent to the reference answer and "
    "whether its reasoning supports it. Explain briefly, then end with a line of the form 'SCORE: x' where x is a "
    "number between 0 and 1 (1: correct and well justified, 0: wrong)."
)
USER_TEMPLATE = "Problem:\n{problem}\n\nReference answer:\n{gold}\n\nCandidate response:\n{response}"

_SCORE = re.compile(r"\bSCORE\s*[:=]\s*\**\s*([-+]?(?:\d+(?:\.\d*)?|\.\d+))", re.IGNORECASE)
# Responses are truncated to this many characters before they are sent: a runaway generation must not make a
# request the endpoint rejects (and the judge cannot read a megabyte anyway).
MAX_RESPONSE_CHARS = 32_000
_RETRYABLE_HTTP = {408, 409, 425, 429, 500, 502, 503, 504}


def parse_score(reply: str) -> float | None:
    """The last ``SCORE: x`` in ``reply`` as a float in [0, 1], or None if absent or out of range."""
    if not isinstance(reply, str):
        return None
    matches = _SCORE.findall(reply[-10_000:])
    if not matches:
        return None
    value = float(matches[-1])
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        return None
    return value


class JudgeInterface:
    """A reward model that scores (problem, gold answer, response) triples in [0, 1]."""

    def score(self, problems: Sequence[str], golds: Sequence[str], responses: Sequence[str]) -> list[float]:
        """One score in [0, 1] per response."""
        raise NotImplementedError

    def close(self) -> None:
        """Release resources (threads, connections). Default: nothing to release."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass
class JudgeStats:
    """Counters since the judge was created."""

    requests: int = 0
    retries: int = 0
    errors: int = 0
    # Responses scored 0 without a request because the circuit breaker held the endpoint for down.
    skipped: int = 0
    # Times the breaker opened.
    breaker_opened: int = 0


class _RetryableError(Exception):
    pass


class _EndpointDown(Exception):
    """The circuit breaker is open: no request is made."""


class CircuitBreaker:
    """Consecutive-failure breaker: ``allow()`` is False while open; after ``cooldown_s`` it lets one probe through
    (half-open), whose success closes it and whose failure opens it again. Thread-safe."""

    def __init__(self, failures: int, cooldown_s: float, clock=time.monotonic) -> None:
        self.threshold = failures
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._lock = threading.Lock()
        self._consecutive = 0
        self._open_until: float | None = None
        self._probing = False

    def allow(self) -> bool:
        with self._lock:
            if self._open_until is None:
                return True
            if self._probing or self._clock() < self._open_until:
                return False
            self._probing = True  # half-open: this caller probes, the others keep getting False
            return True

    def record(self, ok: bool) -> bool:
        """Count a request's outcome; True when this failure opened the breaker."""
        with self._lock:
            self._probing = False
            if ok:
                self._consecutive = 0
                self._open_until = None
                return False
            self._consecutive += 1
            if self.threshold <= 0 or self._consecutive < self.threshold:
                return False
            was_open = self._open_until is not None
            self._open_until = self._clock() + self.cooldown_s
            return not was_open


class OpenAIJudge(JudgeInterface):
    """Scores responses with a chat model served behind an OpenAI-compatible endpoint (``vllm serve``, ...)."""

    def __init__(self, config: JudgeConfig) -> None:
        if not config.base_url:
            raise ValueError("JudgeConfig.base_url is empty: no judge endpoint to call")
        self.config = config
        self.url = config.base_url.rstrip("/") + "/chat/completions"
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"reward.judge.base_url must be an http:// or https:// URL, got {config.base_url!r}")
        self._scheme, self._host, self._port = parts.scheme, parts.hostname, parts.port
        self._path = parts.path + (f"?{parts.query}" if parts.query else "")
        self.stats = JudgeStats()
        self._stats_lock = threading.Lock()
        self._breaker = CircuitBreaker(config.breaker_failures, config.breaker_cooldown_s)
        self._pool = ThreadPoolExecutor(max_workers=max(1, config.concurrency), thread_name_prefix="judge")

    def close(self) -> None:
        """Stop the request threads."""
        self._pool.shutdown(wait=False, cancel_futures=True)

    def score(self, problems: Sequence[str], golds: Sequence[str], responses: Sequence[str]) -> list[float]:
        """One score in [0, 1] per response; failures score 0 and are counted in ``stats.errors``."""
        if not len(problems) == len(golds) == len(responses):
            raise ValueError(f"lengths differ: {len(problems)} problems, {len(golds)} golds, {len(responses)} responses")
        return list(self._pool.map(self._score_one, problems, golds, responses))

    def _count(self, field: str) -> None:
        with self._stats_lock:
            setattr(self.stats, field, getattr(self.stats, field) + 1)

    def _score_one(self, problem: str, gold: str, response: str) -> float:
        try:
            reply = self._complete(USER_TEMPLATE.format(problem=problem, gold=gold,
                                                        response=str(response)[-MAX_RESPONSE_CHARS:]))
        except _EndpointDown:
            self._count("skipped")
            return 0.0
        except Exception as err:  # noqa: BLE001 - a failed judge call is a 0, never a failed step
            self._count("errors")
            log.warning("judge request failed: %s", _describe(err))
            return 0.0
        value = parse_score(reply)
        if value is None:
            self._count("errors")
            log.warning("judge reply has no 'SCORE: x' with x in [0, 1] (reply ends with %r)", reply[-80:])
            return 0.0
        return value

    def _complete(self, user: str) -> str:
        cfg = self.config
        body = json.dumps({
            "model": cfg.model,
            "messages": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}],
            "temperature": cfg.temperature,
            "max_tokens": cfg.max_tokens,
        }).encode()
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(cfg.api_key_env, "") if cfg.api_key_env else ""
        if key:
            headers["Authorization"] = f"Bearer {key}"
        delay = cfg.backoff_s
        last_error: Exception | None = None
        for attempt in range(cfg.max_retries + 1):
            if attempt:
                time.sleep(min(delay, 30.0))
                delay *= 2
            if not self._breaker.allow():
                if last_error is not None:  # this response was sent and failed: an error, not a skip
                    raise last_error
                raise _EndpointDown()
            if attempt:
                self._count("retries")
            self._count("requests")
            try:
                payload = self._post(body, headers)
            except Exception as err:
                last_error = err
                if self._breaker.record(ok=False):
                    self._count("breaker_opened")
                    log.warning("judge endpoint %s://%s%s failed %d requests in a row (last: %s): scoring 0 without "
                                "calling it for %.0f s (counted in judge stats.skipped)", self._scheme, self._host,
                                f":{self._port}" if self._port else "", cfg.breaker_failures, _describe(err),
                                cfg.breaker_cooldown_s)
                if isinstance(err, _RetryableError) and attempt < cfg.max_retries:
                    continue
                raise
            self._breaker.record(ok=True)
            try:
                return str(payload["choices"][0]["message"]["content"] or "")
            except (KeyError, IndexError, TypeError):
                raise RuntimeError("reply has no choices[0].message.content") from None
        raise AssertionError("unreachable")

    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        if self._scheme == "https":
            return http.client.HTTPSConnection(self._host, self._port, timeout=timeout,
                                               context=ssl.create_default_context())
        return http.client.HTTPConnection(self._host, self._port, timeout=timeout)

    def _post(self, body: bytes, headers: dict[str, str]) -> object:
        """One POST; the parsed JSON reply. Raises ``_RetryableError`` for what a retry may fix."""
        cfg = self.config
        conn = self._connection(cfg.timeout_s)
        # The deadline covers the whole exchange: when it passes, the socket is shut down under whatever read or
        # write is blocked (a per-socket timeout alone restarts at every byte a trickling server sends).
        expired = threading.Event()

        def expire() -> None:
            expired.set()
            sock = conn.sock
            if sock is not None:
                try:
                    sock.shutdown(2)
                except OSError:
                    pass

        timer = threading.Timer(cfg.timeout_s, expire)
        timer.daemon = True
        timer.start()
        try:
            conn.request("POST", self._path, body=body, headers=headers)
            resp = conn.getresponse()
            if 300 <= resp.status < 400:
                # Not followed: the Authorization header would go to (and the score come from) that server.
                target = urlsplit(resp.getheader("Location") or "")
                raise RuntimeError(f"HTTP {resp.status} redirect to {target.scheme}://{target.netloc} refused "
                                   "(redirects are not followed; set reward.judge.base_url to the final URL)")
            if resp.status in _RETRYABLE_HTTP:
                raise _RetryableError(f"HTTP {resp.status}")
            if resp.status != 200:
                raise RuntimeError(f"HTTP {resp.status} from judge endpoint")
            length = resp.getheader("Content-Length")
            if length is not None and length.strip().isdigit() and int(length) > cfg.max_reply_bytes:
                raise RuntimeError(f"reply of {int(length)} bytes exceeds reward.judge.max_reply_bytes="
                                   f"{cfg.max_reply_bytes}")
            data = bytearray()
            while True:
                chunk = resp.read1(min(65536, cfg.max_reply_bytes + 1 - len(data)))
                if not chunk:
                    break
                data += chunk
                if len(data) > cfg.max_reply_bytes:
                    raise RuntimeError(f"reply exceeds reward.judge.max_reply_bytes={cfg.max_reply_bytes}")
            if expired.is_set():
                raise _RetryableError(f"no complete reply within timeout_s={cfg.timeout_s}")
            return json.loads(bytes(data))
        except (TimeoutError, ConnectionError, OSError, http.client.HTTPException) as err:
            if expired.is_set():
                raise _RetryableError(f"no complete reply within timeout_s={cfg.timeout_s}") from None
            raise _RetryableError(_describe(err)) from None
        except ValueError:
            raise _RetryableError("reply is not JSON") from None
        finally:
            timer.cancel()
            conn.close()


def _describe(err: BaseException) -> str:
    """A one-line description of a request failure; never contains request headers (the API key)."""
    reason = getattr(err, "reason", None)
    return f"{type(err).__name__}: {reason if reason is not None else err}"[:200]
