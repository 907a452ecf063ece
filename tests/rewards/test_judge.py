import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from nemo_igrpo.rewards.config import JudgeConfig
from nemo_igrpo.rewards.judge import OpenAIJudge, parse_score


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep test output clean
        pass

    def do_POST(self):
        srv = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with srv.lock:
            srv.calls += 1
            call = srv.calls
            srv.auth.append(self.headers.get("Authorization"))
            srv.bodies.append(body)
        mode = srv.mode
        if mode == "fail_then_ok" and call <= 2:
            self.send_response(503)
            self.end_headers()
            return
        if mode == "always_500":
            self.send_response(500)
            self.end_headers()
            return
        if mode == "bad_request":
            self.send_response(400)
            self.end_headers()
            return
        if mode == "slow":
            time.sleep(1.0)
        user = body["messages"][-1]["content"]
        reply = "garbage without a verdict" if "UNPARSABLE" in user else (
            "The answer matches.\nSCORE: 0.8" if "right" in user else "Wrong.\nSCORE: 0")
        payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": reply}}]}).encode()
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass


@pytest.fixture
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    srv.lock, srv.calls, srv.auth, srv.bodies, srv.mode = threading.Lock(), 0, [], [], "ok"
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _judge(server, **kw):
    cfg = JudgeConfig(base_url=f"http://127.0.0.1:{server.server_port}/v1", model="judge-model",
                      api_key_env="IGRPO_TEST_JUDGE_KEY", backoff_s=0.01, **kw)
    return OpenAIJudge(cfg)


@pytest.mark.parametrize("reply, value", [
    ("SCORE: 0.8", 0.8), ("reasoning...\nscore: 1", 1.0), ("SCORE: 0.2 ... on reflection SCORE: 0.6", 0.6),
    ("**SCORE:** 0.5", 0.5), ("SCORE: **0.5**", 0.5), ("SCORE=.25", 0.25), ("SCORE: 1.5", None), ("SCORE: -0.1", None),
    ("no score", None), ("", None),
])
def test_parse_score(reply, value):
    assert parse_score(reply) == value


def test_scores_and_api_key(server, monkeypatch, caplog):
    monkeypatch.setenv("IGRPO_TEST_JUDGE_KEY", "sk-secret-123")
    with _judge(server) as judge:
        scores = judge.score(["p1", "p2", "p3"], ["1", "2", "3"], ["right", "wrong", "UNPARSABLE"])
    assert scores == [0.8, 0.0, 0.0]
    assert judge.stats.errors == 1
    assert server.auth == ["Bearer sk-secret-123"] * 3
    assert server.bodies[0]["model"] == "judge-model" and server.bodies[0]["temperature"] == 0.0
    assert "sk-secret-123" not in caplog.text and "sk-secret-123" not in repr(judge.__dict__)


def test_retries_with_backoff(server):
    server.mode = "fail_then_ok"
    with _judge(server, max_retries=3, concurrency=1) as judge:
        assert judge.score(["p"], ["1"], ["right"]) == [0.8]
    assert server.calls == 3 and judge.stats.retries == 2 and judge.stats.errors == 0


def test_gives_up_after_retries(server):
    server.mode = "always_500"
    with _judge(server, max_retries=2) as judge:
        assert judge.score(["p"], ["1"], ["right"]) == [0.0]
    assert server.calls == 3 and judge.stats.errors == 1


def test_client_error_is_not_retried(server):
    server.mode = "bad_request"
    with _judge(server, max_retries=3) as judge:
        assert judge.score(["p"], ["1"], ["right"]) == [0.0]
    assert server.calls == 1


def test_timeout(server):
    server.mode = "slow"
    with _judge(server, timeout_s=0.2, max_retries=1) as judge:
        t0 = time.perf_counter()
        assert judge.score(["p"], ["1"], ["right"]) == [0.0]
        assert time.perf_counter() - t0 < 1.5
    assert judge.stats.errors == 1 and server.calls == 2


def test_unreachable_endpoint():
    cfg = JudgeConfig(base_url="http://127.0.0.1:9/v1", timeout_s=0.5, max_retries=1, backoff_s=0.01)
    with OpenAIJudge(cfg) as judge:
        assert judge.score(["p"], ["1"], ["right"]) == [0.0]
    assert judge.stats.errors == 1


# ----------------------------------------------------------------------------------- an endpoint that misbehaves
class _Misbehaving(BaseHTTPRequestHandler):
    """A judge endpoint gone wrong, chosen by ``server.mode``: a redirect to another server, a reply trickled one byte
    at a time, a huge reply (with or without Content-Length), no answer at all."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):  # urllib follows a 301/302/303 answer to a POST with a GET (and the same headers)
        self.do_POST()

    def do_POST(self):
        srv = self.server
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with srv.lock:
            srv.calls += 1
            srv.auth.append(self.headers.get("Authorization"))
        ok = json.dumps({"choices": [{"message": {"content": "SCORE: 1"}}]}).encode()
        try:
            if srv.mode == "redirect":
                self.send_response(srv.redirect_code)
                self.send_header("Location", srv.location)
                self.send_header("Content-Length", "0")
                self.end_headers()
            elif srv.mode == "trickle":
                self.send_response(200)
                self.send_header("Content-Length", str(len(ok)))
                self.end_headers()
                for b in ok:  # one byte every 50 ms: each read is quick, the whole reply takes seconds
                    self.wfile.write(bytes([b]))
                    self.wfile.flush()
                    time.sleep(0.05)
            elif srv.mode in ("huge", "huge_unsized"):
                chunk = b" " * (1 << 20)
                self.send_response(200)
                if srv.mode == "huge":
                    self.send_header("Content-Length", str(50 * len(chunk) + len(ok)))
                else:
                    self.send_header("Connection", "close")  # body ends when the connection does
                self.end_headers()
                for _ in range(50):
                    self.wfile.write(chunk)
                    with srv.lock:
                        srv.sent += len(chunk)
                self.wfile.write(ok)
            elif srv.mode == "silent":
                time.sleep(3.0)
            else:
                self.send_response(200)
                self.send_header("Content-Length", str(len(ok)))
                self.end_headers()
                self.wfile.write(ok)
        except (BrokenPipeError, ConnectionResetError):
            pass


def _serve(handler):
    srv = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    srv.daemon_threads = True
    srv.lock, srv.calls, srv.auth, srv.sent, srv.mode, srv.location = threading.Lock(), 0, [], 0, "ok", ""
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


@pytest.fixture
def bad_server():
    srvs = [_serve(_Misbehaving), _serve(_Misbehaving)]
    yield srvs
    for srv in srvs:
        srv.shutdown()
        srv.server_close()


def _bad_judge(srv, **kw):
    cfg = dict(base_url=f"http://127.0.0.1:{srv.server_port}/v1", model="m", api_key_env="IGRPO_TEST_JUDGE_KEY",
               backoff_s=0.01, max_retries=0, concurrency=1)
    cfg.update(kw)
    return OpenAIJudge(JudgeConfig(**cfg))


@pytest.mark.parametrize("code", [301, 302, 303, 307, 308])
def test_redirect_to_another_server_is_refused_and_gets_no_key(bad_server, monkeypatch, caplog, code):
    monkeypatch.setenv("IGRPO_TEST_JUDGE_KEY", "sk-secret-123")
    judge_srv, other = bad_server
    judge_srv.mode, judge_srv.redirect_code = "redirect", code
    judge_srv.location = f"http://127.0.0.1:{other.server_port}/v1/chat/completions"  # would answer SCORE: 1
    with _bad_judge(judge_srv) as judge:
        assert judge.score(["p"], ["1"], ["r"]) == [0.0]
    assert judge_srv.auth == ["Bearer sk-secret-123"] and other.calls == 0
    assert judge.stats.errors == 1 and "redirect" in caplog.text and "sk-secret-123" not in caplog.text


def test_timeout_is_a_total_deadline_against_a_trickling_reply(bad_server):
    srv = bad_server[0]
    srv.mode = "trickle"  # about 55 bytes at 50 ms each: ~2.8 s, every single read well inside the timeout
    with _bad_judge(srv, timeout_s=0.5) as judge:
        t0 = time.perf_counter()
        assert judge.score(["p"], ["1"], ["r"]) == [0.0]
        assert time.perf_counter() - t0 < 1.5
    assert judge.stats.errors == 1


@pytest.mark.parametrize("mode", ["huge", "huge_unsized"])
def test_huge_reply_is_cut_off(bad_server, mode):
    import tracemalloc

    srv = bad_server[0]
    srv.mode = mode  # 50 MiB of whitespace, then a valid verdict: valid JSON, if anyone read it all
    with _bad_judge(srv, max_reply_bytes=100_000) as judge:
        tracemalloc.start()
        try:
            assert judge.score(["p"], ["1"], ["r"]) == [0.0]
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert peak < 5 * (1 << 20), peak  # never holds the reply: a few chunks at most
    assert judge.stats.errors == 1


def test_circuit_breaker_stops_calling_a_silent_endpoint(bad_server, caplog):
    srv = bad_server[0]
    srv.mode = "silent"
    with _bad_judge(srv, timeout_s=0.3, breaker_failures=3, breaker_cooldown_s=0.5) as judge:
        t0 = time.perf_counter()
        assert judge.score(["p"] * 20, ["1"] * 20, ["r"] * 20) == [0.0] * 20
        elapsed = time.perf_counter() - t0
        assert srv.calls == 3 and elapsed < 2.0, (srv.calls, elapsed)
        assert judge.stats.skipped == 17 and judge.stats.errors == 3 and judge.stats.breaker_opened == 1
        assert caplog.text.count("failed 3 requests in a row") == 1
        # After the cooldown one request probes the endpoint; it is back, so scoring resumes.
        srv.mode = "ok"
        time.sleep(0.6)
        assert judge.score(["p"] * 3, ["1"] * 3, ["r"] * 3) == [1.0] * 3
    assert srv.calls == 6


def test_circuit_breaker_against_a_dead_port():
    cfg = JudgeConfig(base_url="http://127.0.0.1:9/v1", timeout_s=0.5, max_retries=3, backoff_s=0.01,
                      breaker_failures=4, concurrency=2)
    with OpenAIJudge(cfg) as judge:
        assert judge.score(["p"] * 10, ["1"] * 10, ["r"] * 10) == [0.0] * 10
    assert judge.stats.requests <= 5 and judge.stats.skipped >= 8, judge.stats


def test_base_url_must_be_http():
    with pytest.raises(ValueError, match="http:// or https://"):
        OpenAIJudge(JudgeConfig(base_url="file:///etc/passwd"))
