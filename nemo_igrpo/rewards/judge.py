"""Generative judge reward: a model behind an OpenAI-compatible ``/chat/completions`` endpoint grades each response.

Reply format the judge must follow (it is told so in the prompt): free-form reasoning, then a final line
``SCORE: <number>`` with the number in [0, 1]. The LAST ``SCORE:`` in the reply counts, so the judge may think aloud.
A reply without a parsable score, a score outside [0, 1], or a request that still fails after the retries scores 0
and increments ``stats.errors``: the judge can only withhold reward, never crash the step.

Standard library only (``urllib``): the judge runs inside the trainer and must not pull in an HTTP client stack.
The API key is read from the environment variable named in ``JudgeConfig.api_key_env`` at request time; it is never
stored in an attribute that a repr or a config dump would show, and never logged.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Sequence

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


class _RetryableError(Exception):
    pass


class OpenAIJudge(JudgeInterface):
    """Scores responses with a chat model served behind an OpenAI-compatible endpoint (``vllm serve``, ...)."""

    def __init__(self, config: JudgeConfig) -> None:
        if not config.base_url:
            raise ValueError("JudgeConfig.base_url is empty: no judge endpoint to call")
        self.config = config
        self.url = config.base_url.rstrip("/") + "/chat/completions"
        self.stats = JudgeStats()
        self._stats_lock = threading.Lock()
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
        for attempt in range(cfg.max_retries + 1):
            if attempt:
                self._count("retries")
                time.sleep(min(delay, 30.0))
                delay *= 2
            self._count("requests")
            try:
                return self._post(body, headers)
            except _RetryableError:
                if attempt == cfg.max_retries:
                    raise
        raise AssertionError("unreachable")

    def _post(self, body: bytes, headers: dict[str, str]) -> str:
        req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.config.timeout_s) as resp:
                payload = json.loads(resp.read())
        except urllib.error.HTTPError as err:
            if err.code in _RETRYABLE_HTTP:
                raise _RetryableError(f"HTTP {err.code}") from None
            raise RuntimeError(f"HTTP {err.code} from judge endpoint") from None
        except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as err:
            raise _RetryableError(_describe(err)) from None
        except ValueError:
            raise _RetryableError("reply is not JSON") from None
        try:
            return str(payload["choices"][0]["message"]["content"] or "")
        except (KeyError, IndexError, TypeError):
            raise RuntimeError("reply has no choices[0].message.content") from None


def _describe(err: BaseException) -> str:
    """A one-line description of a request failure; never contains request headers (the API key)."""
    reason = getattr(err, "reason", None)
    return f"{type(err).__name__}: {reason if reason is not None else err}"[:200]
