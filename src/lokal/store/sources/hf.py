"""Pull a GGUF file from a Hugging Face repository: ``hf.co/<owner>/<repo>[:<quant>]``.

huggingface_hub lists the repository (file names, sizes and LFS sha256s) and builds the download URL and
auth headers (it honours ``HF_TOKEN``); the bytes stream into our own blob writer so that a broken download
resumes and is verified against the sha256 the hub published. ``HF_ENDPOINT`` is passed explicitly because
huggingface_hub reads it only once, at import.
"""

from __future__ import annotations

import re
from typing import Iterator
from urllib.parse import urlsplit

import httpx
from huggingface_hub import HfApi, ModelInfo, hf_hub_url
from huggingface_hub.errors import (
    GatedRepoError, HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError,
)
from huggingface_hub.utils import build_hf_headers

from lokal.config import env_flag
from lokal.errors import ModelNotFound, PullError
from lokal.store.names import DEFAULT_TAG, ModelName
from lokal.store.sources.base import Progress, download_blob, http_client, write_gguf_model
from lokal.store.store import Store

DEFAULT_ENDPOINT = "https://huggingface.co"
# What `latest` means: Q4_K_M, else the first of these the repository has (roughly best quality per byte).
QUANT_PREFERENCE = ("Q4_K_M", "Q4_K_S", "Q5_K_M", "Q4_0", "Q4_1", "Q5_0", "Q5_K_S", "Q8_0", "Q6_K", "Q3_K_M",
                    "Q3_K_L", "Q3_K_S", "IQ4_XS", "IQ4_NL", "Q2_K", "F16", "BF16", "F32")
_SYNONYMS = {"F16": ("F16", "FP16"), "FP16": ("F16", "FP16"), "F32": ("F32", "FP32"), "FP32": ("F32", "FP32")}
# What the hub client raises when the network fails: requests (OSError) before huggingface_hub 1.0, then
# httpx, then httpx2.
try:
    from httpx2 import HTTPError as _HTTPX2Error
except ImportError:  # pragma: no cover - older huggingface_hub
    _HTTPX2Error = httpx.HTTPError
_NETWORK_ERRORS = (OSError, httpx.HTTPError, _HTTPX2Error)
# Parts of a split model and vision projectors are not a model on their own.
_NOT_A_MODEL = re.compile(r"-\d{5}-of-\d{5}\.gguf$|mmproj", re.IGNORECASE)


def has_quant(file_name: str, quant: str) -> bool:
    """Whether ``Model-Q4_K_M.gguf`` is the ``q4_k_m`` file (whole token: ``Q4_K`` is not ``Q4_K_M``)."""
    stem = file_name.rsplit("/", 1)[-1].upper().removesuffix(".GGUF")
    for spelling in _SYNONYMS.get(quant.upper(), (quant.upper(),)):
        if re.search(rf"(?:^|[-._]){re.escape(spelling)}(?=$|[-.])", stem):
            return True
    return False


def choose_gguf(file_names: list[str], quant: str | None) -> str:
    """The file for ``quant``; for no quant, Q4_K_M or the first in QUANT_PREFERENCE the repo has."""
    candidates = [f for f in file_names if f.lower().endswith(".gguf") and not _NOT_A_MODEL.search(f)]
    if not candidates:
        raise LookupError("no single-file GGUF model")
    if quant:
        for name in candidates:
            if has_quant(name, quant):
                return name
        raise LookupError(f"no {quant.upper()} file; it has {', '.join(sorted(candidates))}")
    for preferred in QUANT_PREFERENCE:
        for name in candidates:
            if has_quant(name, preferred):
                return name
    return sorted(candidates)[0]


class HFSource:
    """``repo`` (``owner/name``) on the hub; a given ``file`` wins over choosing one by ``quant``."""

    def __init__(self, repo: str, *, quant: str | None = None, file: str | None = None,
                 revision: str = "main", endpoint: str | None = None):
        self.repo = repo
        self.quant = quant
        self.file = file
        self.revision = revision
        self.endpoint = (endpoint or env_flag("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")
        self.host = urlsplit(self.endpoint).netloc or self.endpoint

    @classmethod
    def for_name(cls, name: ModelName) -> HFSource:
        quant = None if name.tag.lower() == DEFAULT_TAG else name.tag
        return cls(f"{name.namespace}/{name.model}", quant=quant)

    def pull(self, store: Store, name: ModelName) -> Iterator[Progress]:
        yield Progress("pulling manifest")
        info = self._repo_info(name)
        files = {sibling.rfilename: sibling for sibling in info.siblings or []}
        file_name = self.file if self.file in files else None
        if self.file and file_name is None:
            raise ModelNotFound(name.display, f"{self.repo} on {self.host} has no file {self.file}")
        if file_name is None:
            try:
                file_name = choose_gguf(list(files), self.quant)
            except LookupError as exc:
                raise ModelNotFound(name.display, f"{self.repo} on {self.host} has {exc}") from None
        sibling = files[file_name]
        digest = "sha256:" + sibling.lfs.sha256 if sibling.lfs else None
        size = sibling.lfs.size if sibling.lfs else sibling.size
        url = hf_hub_url(self.repo, file_name, revision=info.sha or self.revision, endpoint=self.endpoint)
        license = _license_of(info)
        with http_client() as client, store.writing():
            model_digest = yield from download_blob(client, url, store.blobs, digest=digest, size=size,
                                                    host=self.host, what=f"{self.repo}/{file_name}",
                                                    headers=build_hf_headers())
            extra = {"license": license.encode()} if license else {}
            yield from write_gguf_model(store, name, model_digest, origin=f"{self.repo}/{file_name}",
                                        extra_layers=extra)

    def _repo_info(self, name: ModelName) -> ModelInfo:
        api = HfApi(endpoint=self.endpoint)
        try:
            return api.model_info(self.repo, revision=self.revision, files_metadata=True)
        except GatedRepoError:
            raise PullError(f"{self.repo} on {self.host} is gated: accept its terms on the hub and set "
                            f"HF_TOKEN to a token with access") from None
        except RepositoryNotFoundError:
            raise ModelNotFound(name.display, f"{self.repo} was not found on {self.host} (if it is private, "
                                              f"set HF_TOKEN)") from None
        except RevisionNotFoundError:
            raise ModelNotFound(name.display, f"{self.repo} on {self.host} has no revision {self.revision}") from None
        except HfHubHTTPError as exc:
            raise PullError(f"listing {self.repo} on {self.host} failed: {str(exc).splitlines()[0]}") from None
        except _NETWORK_ERRORS as exc:
            raise PullError(f"listing {self.repo} on {self.host} failed: {type(exc).__name__}: {exc}") from None


def _license_of(info: ModelInfo) -> str | None:
    card = info.card_data
    license = card.get("license") if card is not None else None
    return license if isinstance(license, str) and license else None
