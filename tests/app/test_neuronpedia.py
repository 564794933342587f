"""The Neuronpedia client against a local server on 127.0.0.1 that replays recorded-shape JSON and failures."""

from __future__ import annotations

import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from engine.services.neuronpedia import NeuronpediaClient, NeuronpediaError, split_neuronpedia_id

KEY = "sk-np-test-secret-123"

SEARCH_REPLY = {
    "request": {"modelId": "gpt2-small", "layers": ["6-res-jb"], "query": "refusal"},
    "results": [
        {"modelId": "gpt2-small", "layer": "6-res-jb", "index": "1234", "description": "refusing a request politely",
         "explanationModelName": "gpt-4o-mini", "typeName": "oai_token-act-pair", "cosine_similarity": 0.61},
        {"modelId": "gpt2-small", "layer": "6-res-jb", "index": 77, "description": "apologies", "cosine_similarity": 0.55},
        {"modelId": "gpt2-small", "layer": "6-res-jb", "index": None, "description": "broken row"},
    ],
    "resultsCount": 3, "hasMore": False, "nextOffset": 3,
}
FEATURE_REPLY = {
    "modelId": "gpt2-small", "layer": "6-res-jb", "index": "1234", "maxActApprox": 12.5, "frac_nonzero": 0.0012,
    "explanations": [{"description": "refusing a request politely", "explanationModelName": "gpt-4o-mini"}],
    "pos_str": [" sorry", " cannot"], "pos_values": [1.2, 1.1], "neg_str": [" sure"], "neg_values": [-0.9],
    "activations": [{"tokens": ["I", " cannot", " help"], "values": [0.0, 12.5, 3.0], "maxValue": 12.5, "maxValueTokenIndex": 1}],
}


class _Handler(BaseHTTPRequestHandler):
    mode = "ok"
    seen: list = []

    def log_message(self, *args):  # keep test output quiet
        pass

    def _reply(self, payload):
        mode = type(self).mode
        if mode == "timeout":
            time.sleep(1.5)
        if mode in ("429", "500", "404", "403"):
            self.send_response(int(mode))
            if mode == "429":
                self.send_header("Retry-After", "30")
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"error": "nope"}')
            return
        body = b"{not json at all" if mode == "malformed" else json.dumps({"unexpected": True} if mode == "shape" else payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except BrokenPipeError:
            pass

    def do_POST(self):
        length = int(self.headers.get("Content-Length", 0))
        type(self).seen.append({"path": self.path, "key": self.headers.get("x-api-key"), "body": json.loads(self.rfile.read(length) or b"{}")})
        self._reply(SEARCH_REPLY)

    def do_GET(self):
        type(self).seen.append({"path": self.path, "key": self.headers.get("x-api-key")})
        self._reply(FEATURE_REPLY)


@pytest.fixture
def server():
    _Handler.mode, _Handler.seen = "ok", []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_search_parses_results_and_sends_the_key(server):
    client = NeuronpediaClient(base_url=server, api_key=KEY, timeout=2)
    hits = client.search("gpt2-small", ["6-res-jb"], "refusal")
    assert [(h.index, h.description) for h in hits] == [(1234, "refusing a request politely"), (77, "apologies")]
    assert hits[0].score == pytest.approx(0.61)
    assert hits[0].url == "https://www.neuronpedia.org/gpt2-small/6-res-jb/1234"
    req = _Handler.seen[-1]
    assert req["path"] == "/api/explanation/search" and req["key"] == KEY
    assert req["body"] == {"modelId": "gpt2-small", "layers": ["6-res-jb"], "query": "refusal", "offset": 0}


def test_feature_fetch(server):
    info = NeuronpediaClient(base_url=server, timeout=2).feature("gpt2-small", "6-res-jb", 1234)
    assert info.explanations == ["refusing a request politely"]
    assert info.pos_tokens == [" sorry", " cannot"] and info.neg_values == [-0.9]
    assert info.max_act == 12.5 and info.frac_nonzero == pytest.approx(0.0012)
    assert info.examples[0]["tokens"][1] == " cannot"
    assert _Handler.seen[-1]["path"] == "/api/feature/gpt2-small/6-res-jb/1234"
    assert _Handler.seen[-1]["key"] is None  # no key configured, none sent


def test_key_from_environment(server, monkeypatch):
    monkeypatch.setenv("NEURONPEDIA_API_KEY", KEY)
    NeuronpediaClient(base_url=server, timeout=2).feature("m", "l", 1)
    assert _Handler.seen[-1]["key"] == KEY


@pytest.mark.parametrize(
    ("mode", "message"),
    [
        ("429", "rate limit was hit (HTTP 429) (retry after 30 s)"),
        ("500", "having trouble (HTTP 500)"),
        ("404", "no such model, SAE or feature"),
        ("403", "refused the request (HTTP 403)"),
        ("timeout", "did not answer within 0.5 s"),
        ("malformed", "not valid JSON"),
        ("shape", "unexpected shape"),
    ],
)
def test_failures_are_clear_and_never_leak_the_key(server, caplog, mode, message):
    _Handler.mode = mode
    client = NeuronpediaClient(base_url=server, api_key=KEY, timeout=0.5)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(NeuronpediaError) as err:
        client.search("gpt2-small", ["6-res-jb"], "refusal")
    assert message in str(err.value)
    assert "\n" not in str(err.value)
    assert KEY not in str(err.value) and KEY not in repr(client) and KEY not in caplog.text


def test_unreachable_server_is_a_clear_error():
    client = NeuronpediaClient(base_url="http://127.0.0.1:9", timeout=1)  # discard port: nothing listens
    with pytest.raises(NeuronpediaError, match="unreachable"):
        client.feature("m", "l", 1)


def test_bad_input_is_refused_before_any_request():
    client = NeuronpediaClient(base_url="http://127.0.0.1:9")
    with pytest.raises(NeuronpediaError, match="type something"):
        client.search("m", ["l"], "  ")
    with pytest.raises(NeuronpediaError, match="no Neuronpedia id"):
        client.search("", [], "x")
    with pytest.raises(NeuronpediaError, match="MODEL/LAYER"):
        split_neuronpedia_id("no-slash")
    assert split_neuronpedia_id("gpt2-small/6-res-jb") == ("gpt2-small", "6-res-jb")
