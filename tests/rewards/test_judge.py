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
