"""A small Neuronpedia client: search feature explanations by text, fetch one feature.

* ``POST /api/explanation/search`` with ``{"modelId", "layers": [...], "query", "offset"}``;
* ``GET /api/feature/{modelId}/{layer}/{index}``.

The API key (optional for these reads) comes from the caller (the dashboard passes ``st.secrets``) or from
``NEURONPEDIA_API_KEY``. It is sent as the ``x-api-key`` header and never logged, shown or put in an error
message. The base URL is configurable (``NEURONPEDIA_BASE_URL``) so tests can point at a local server.
Every failure (timeout, unreachable, 429, 5xx, malformed JSON, unexpected shape) is a
:class:`NeuronpediaError` with one clear line.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from urllib.parse import quote

import requests

from engine.errors import LabError

logger = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://www.neuronpedia.org"
DEFAULT_TIMEOUT = 10.0


class NeuronpediaError(LabError):
    """Neuronpedia could not answer usefully; the message says why and what to do."""


@dataclass
class SearchHit:
    """One explanation that matched a text search."""

    model_id: str
    layer: str
    index: int
    description: str
    score: float | None = None
    url: str = ""


@dataclass
class FeatureInfo:
    """What Neuronpedia knows about one feature."""

    model_id: str
    layer: str
    index: int
    explanations: list[str] = field(default_factory=list)
    pos_tokens: list[str] = field(default_factory=list)
    pos_values: list[float] = field(default_factory=list)
    neg_tokens: list[str] = field(default_factory=list)
    neg_values: list[float] = field(default_factory=list)
    frac_nonzero: float | None = None
    max_act: float | None = None
    examples: list[dict] = field(default_factory=list)
    """Top activating examples: ``{"tokens": [...], "values": [...], "max": float}``."""
    url: str = ""


def split_neuronpedia_id(np_id: str) -> tuple[str, str]:
    """``"gpt2-small/6-res-jb"`` → ``("gpt2-small", "6-res-jb")``."""
    if not np_id or "/" not in np_id:
        raise NeuronpediaError(f"{np_id!r} is not a Neuronpedia id of the form MODEL/LAYER")
    model_id, layer = np_id.split("/", 1)
    return model_id, layer


class NeuronpediaClient:
    """Neuronpedia reads with timeouts and clear errors. The key is kept private (see module docstring)."""

    def __init__(self, base_url: str | None = None, api_key: str | None = None, timeout: float = DEFAULT_TIMEOUT,
                 session: requests.Session | None = None, site_url: str | None = None):
        self.base_url = (base_url or os.environ.get("NEURONPEDIA_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        self.site_url = (site_url or DEFAULT_BASE_URL).rstrip("/")
        self._api_key = api_key or os.environ.get("NEURONPEDIA_API_KEY") or None
        self.timeout = float(timeout)
        self._session = session or requests.Session()

    def __repr__(self) -> str:  # never show the key
        return f"NeuronpediaClient(base_url={self.base_url!r}, key={'set' if self._api_key else 'none'}, timeout={self.timeout})"

    @property
    def has_key(self) -> bool:
        return bool(self._api_key)

    def feature_url(self, model_id: str, layer: str, index: int) -> str:
        return f"{self.site_url}/{model_id}/{layer}/{int(index)}"

    # ---------------------------------------------------------------------------------------------- requests

    def _request(self, method: str, path: str, payload: dict | None = None) -> object:
        headers = {"Accept": "application/json"}
        if self._api_key:
            headers["x-api-key"] = self._api_key
        url = self.base_url + path
        logger.info("neuronpedia %s %s", method, path)  # path only: no headers, no key
        try:
            resp = self._session.request(method, url, json=payload, headers=headers, timeout=self.timeout)
        except requests.Timeout:
            raise NeuronpediaError(f"Neuronpedia did not answer within {self.timeout:g} s; try again later") from None
        except requests.ConnectionError:
            raise NeuronpediaError(f"Neuronpedia is unreachable ({self.base_url}); check the network, or work offline") from None
        except requests.RequestException as exc:
            raise NeuronpediaError(f"the request to Neuronpedia failed: {type(exc).__name__}") from None
        if resp.status_code == 429:
            wait = resp.headers.get("Retry-After")
            hint = f" (retry after {wait} s)" if wait else ""
            raise NeuronpediaError(f"Neuronpedia's rate limit was hit (HTTP 429){hint}; wait a minute, or set NEURONPEDIA_API_KEY")
        if resp.status_code in (401, 403):
            raise NeuronpediaError(f"Neuronpedia refused the request (HTTP {resp.status_code}); check NEURONPEDIA_API_KEY")
        if resp.status_code == 404:
            raise NeuronpediaError("Neuronpedia has no such model, SAE or feature (HTTP 404)")
        if resp.status_code >= 500:
            raise NeuronpediaError(f"Neuronpedia is having trouble (HTTP {resp.status_code}); try again later")
        if resp.status_code >= 400:
            raise NeuronpediaError(f"Neuronpedia rejected the request (HTTP {resp.status_code})")
        try:
            return resp.json()
        except ValueError:
            raise NeuronpediaError("Neuronpedia returned a response that is not valid JSON; try again later") from None

    # ---------------------------------------------------------------------------------------------- endpoints

    def search(self, model_id: str, layers: list[str], query: str, offset: int = 0) -> list[SearchHit]:
        """Explanations of features in ``layers`` of ``model_id`` that match ``query`` (best first)."""
        query = (query or "").strip()
        if not query:
            raise NeuronpediaError("type something to search for")
        if not model_id or not layers:
            raise NeuronpediaError("this SAE has no Neuronpedia id, so it cannot be searched there")
        data = self._request("POST", "/api/explanation/search", {"modelId": model_id, "layers": list(layers), "query": query, "offset": int(offset)})
        rows = data.get("results") if isinstance(data, dict) else None
        if not isinstance(rows, list):
            raise NeuronpediaError("Neuronpedia's search answer has an unexpected shape (no 'results' list)")
        hits = []
        for row in rows:
            if not isinstance(row, dict):
                continue
            try:
                index = int(row.get("index"))
            except (TypeError, ValueError):
                continue
            mid, lay = str(row.get("modelId") or model_id), str(row.get("layer") or layers[0])
            score = row.get("cosine_similarity", row.get("score"))
            hits.append(SearchHit(mid, lay, index, str(row.get("description") or ""),
                                  float(score) if isinstance(score, (int, float)) else None, self.feature_url(mid, lay, index)))
        return hits

    def feature(self, model_id: str, layer: str, index: int) -> FeatureInfo:
        """One feature's explanations, logit effects, density and top examples."""
        path = f"/api/feature/{quote(model_id, safe='')}/{quote(layer, safe='')}/{int(index)}"
        data = self._request("GET", path)
        if not isinstance(data, dict):
            raise NeuronpediaError("Neuronpedia's feature answer has an unexpected shape (not an object)")
        if data.get("index") is None and not data.get("explanations") and not data.get("activations"):
            raise NeuronpediaError(f"Neuronpedia has no data for feature {index} of {model_id}/{layer}")
        explanations = [str(e.get("description")) for e in data.get("explanations") or [] if isinstance(e, dict) and e.get("description")]
        examples = []
        for act in (data.get("activations") or [])[:10]:
            if isinstance(act, dict) and isinstance(act.get("tokens"), list):
                values = act.get("values") if isinstance(act.get("values"), list) else []
                examples.append({"tokens": [str(t) for t in act["tokens"]], "values": [float(v) for v in values if isinstance(v, (int, float))],
                                 "max": float(act.get("maxValue") or 0.0)})
        return FeatureInfo(
            model_id=model_id, layer=layer, index=int(index), explanations=explanations,
            pos_tokens=[str(t) for t in data.get("pos_str") or []], pos_values=_floats(data.get("pos_values")),
            neg_tokens=[str(t) for t in data.get("neg_str") or []], neg_values=_floats(data.get("neg_values")),
            frac_nonzero=_float_or_none(data.get("frac_nonzero")), max_act=_float_or_none(data.get("maxActApprox")),
            examples=examples, url=self.feature_url(model_id, layer, index),
        )


def _floats(values: object) -> list[float]:
    return [float(v) for v in values if isinstance(v, (int, float))] if isinstance(values, list) else []


def _float_or_none(value: object) -> float | None:
    return float(value) if isinstance(value, (int, float)) else None
