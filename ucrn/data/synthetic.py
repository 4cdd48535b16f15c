"""Synthetic data of exactly the real files' structure, since no machine of this project can
download them: PRESETS (the published shapes) and a seeded generator whose labels reward fusion."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ucrn.data.dataset import _CHUNK_ELEMS, LABEL_RANGE, MODALITIES, SPLITS, _fail

# make_synthetic returns a raw MulT-format dict (what write_mult_pickle saves and from_raw
# validates); audio and vision carry -inf/NaN like the real files.


def _preset(
    n: tuple[int, int, int],
    seq_lens: tuple[int, int, int],
    input_dims: tuple[int, int, int],
    task: str,
    dataset: str,
    aligned: bool,
) -> dict:
    """Split sizes, (Tl, Ta, Tv), (Dl, Da, Dv), task, and the MulT file name it is saved under."""
    return dict(
        n=n, seq_lens=seq_lens, input_dims=input_dims, task=task, dataset=dataset, aligned=aligned
    )


_TINY_N, _TINY_DIMS = (512, 128, 128), (24, 8, 10)
_MOSI_N, _MOSEI_N = (1284, 229, 686), (16326, 1871, 4659)
_MOSEI_ALIGNED_N, _IEMOCAP_N = (16265, 1869, 4643), (2717, 798, 938)

# Shapes as published (docs/data.md); "dataset" and "aligned" choose the MulT file name.
PRESETS: dict[str, dict] = {
    "tiny": _preset(_TINY_N, (12, 16, 14), _TINY_DIMS, "regression", "synthetic", False),
    "tiny_aligned": _preset(_TINY_N, (12, 12, 12), _TINY_DIMS, "regression", "synthetic", True),
    "iemocap_tiny": _preset(_TINY_N, (12, 16, 14), _TINY_DIMS, "iemocap", "iemocap", False),
    "mosi": _preset(_MOSI_N, (50, 375, 500), (300, 5, 20), "regression", "mosi", False),
    "mosi_aligned": _preset(_MOSI_N, (50, 50, 50), (300, 5, 20), "regression", "mosi", True),
    "mosei": _preset(_MOSEI_N, (50, 500, 500), (300, 74, 35), "regression", "mosei_senti", False),
    "mosei_aligned": _preset(
        _MOSEI_ALIGNED_N, (50, 50, 50), (300, 74, 35), "regression", "mosei_senti", True
    ),
    "iemocap": _preset(_IEMOCAP_N, (20, 400, 500), (300, 74, 35), "iemocap", "iemocap", False),
    "iemocap_aligned": _preset(_IEMOCAP_N, (20, 20, 20), (300, 74, 35), "iemocap", "iemocap", True),
}

# Label model: y = A*s_t + B*s_a + C*s_v + E*s_a*s_v + F*s_t*s_a + noise. The conditional
# mean given one modality is linear in its latent (the products have mean 0 given one
# factor), so a single modality explains at most coef^2 / total of the variance: 30% text,
# 25% audio, 25% vision; all three linearly 80%; with the two interactions 98%.
_COEF = dict(text=1.1, audio=1.0, vision=1.0, audio_vision=0.65, text_audio=0.55)
_LABEL_NOISE = 0.3


def _fusion(st: np.ndarray, sa: np.ndarray, sv: np.ndarray) -> tuple[np.ndarray, float]:
    """The default: mostly linear in the three latents, plus two pairwise products."""
    c = _COEF
    y = (c["text"] * st + c["audio"] * sa + c["vision"] * sv + c["audio_vision"] * sa * sv
         + c["text_audio"] * st * sa)
    return y, sum(v * v for v in c.values())


def _interaction(st: np.ndarray, sa: np.ndarray, sv: np.ndarray) -> tuple[np.ndarray, float]:
    """Cross-modal: 90% of the signal's variance is in products of two modalities' latents,
    which no single modality carries (each product has mean 0 given either factor)."""
    y = st * sa + sa * sv + st * sv + 0.33 * (st + sa + sv)
    return y, 3 + 3 * 0.33**2


# What the sentiment label is a function of (--labels of `ucrn synth`): each returns the
# noise-free label and its variance, for scaling to a MOSI-like spread.
LABEL_MODELS = {"fusion": _fusion, "interaction": _interaction}
_LABEL_STD = 1.4  # MOSI-like spread; ~3% of labels reach the clip at +-3
_SIGNAL_DIMS = 16  # big feature spaces carry the signal on a subset of dims
_N_NUISANCE = 2  # per modality, plus one shared across modalities: look like signal, aren't
_DEFAULT_NOISE = 1.0


def preset_name(preset: str, aligned: bool) -> str:
    if preset not in PRESETS:
        raise _fail(f"unknown preset {preset!r}; expected one of {', '.join(PRESETS)}")
    if not aligned or PRESETS[preset]["aligned"]:
        return preset
    alt = f"{preset}_aligned"
    if alt not in PRESETS:
        aligned_ones = [k for k, v in PRESETS.items() if v["aligned"]]
        raise _fail(
            f"preset {preset!r} has no aligned variant; aligned presets: {', '.join(aligned_ones)}"
        )
    return alt


def _check_triple(name: str, val: Any) -> tuple[int, int, int]:
    try:
        t = tuple(int(v) for v in val)
    except (TypeError, ValueError) as exc:
        raise _fail(
            f"{name}: expected 3 positive integers (text, audio, vision), got {val!r}"
        ) from exc
    if len(t) != 3 or min(t) < 1:
        raise _fail(f"{name}: expected 3 positive integers (text, audio, vision), got {val!r}")
    return t  # type: ignore[return-value]


def _unit_direction(rng: np.random.Generator, dim: int) -> np.ndarray:
    support = rng.permutation(dim)[: min(dim, _SIGNAL_DIMS)]
    u = np.zeros(dim, dtype=np.float64)
    u[support] = rng.standard_normal(len(support))
    return (u / np.linalg.norm(u)).astype(np.float32)


def _time_weights(rng: np.random.Generator, steps: int) -> np.ndarray:
    w = 0.5 + rng.random(steps)  # positive: mean pooling and the last step both see it
    return (w / w.mean()).astype(np.float32)


def _world(rng: np.random.Generator, seq_lens: tuple[int, ...], dims: tuple[int, ...]) -> dict:
    """Fixed structure shared by all splits: where each latent lives in each modality."""
    world = {}
    for m, t, d in zip(MODALITIES, seq_lens, dims, strict=True):
        k = 2 + _N_NUISANCE  # own latent, own nuisances, shared nuisance
        dirs = np.stack([_unit_direction(rng, d) for _ in range(k)])  # (k, D)
        weights = np.stack([_time_weights(rng, t) for _ in range(k)])  # (k, T)
        weights[-1] = 1.0  # the shared nuisance is constant in time (a speaker-like offset)
        world[m] = (dirs, weights)
    return world


def _emotion_labels(rng: np.random.Generator, lat: dict[str, np.ndarray]) -> np.ndarray:
    """(N,4,2) one-hot per emotion; each emotion a different fusion-needing score."""
    st, sa, sv = lat["text"], lat["audio"], lat["vision"]
    n = st.shape[0]
    half_normal_mean = math.sqrt(2 / math.pi)  # E|s|: centres the neutral score
    scores = np.stack(
        [
            2 * half_normal_mean - np.abs(st) - np.abs(sa) + 0.8 * sa * sv,  # neutral
            st + 0.8 * sa + 0.7 * st * sv,  # happy
            -st - 0.6 * sv + 0.8 * sa * sv,  # sad
            0.6 * st + sa - 0.8 * st * sa,  # angry
        ],
        axis=1,
    )
    # divide by the analytic std (not the sample's, which is 0 for a split of one)
    std = np.sqrt([2 * (1 - 2 / math.pi) + 0.64, 1 + 0.64 + 0.49, 1 + 0.36 + 0.64, 2.0])
    scores = scores / std + 0.3 * rng.standard_normal((n, 4))
    on = scores > 0.4  # ~1/3 positive per emotion, imbalanced like IEMOCAP
    out = np.zeros((n, 4, 2), dtype=np.float32)
    out[..., 1] = on
    out[..., 0] = ~on
    return out


def _make_split(
    rng: np.random.Generator,
    split: str,
    n: int,
    seq_lens: tuple[int, int, int],
    dims: tuple[int, int, int],
    world: dict,
    task: str,
    noise: float,
    nonfinite_rate: float,
    labels: str = "fusion",
) -> dict:
    lat = {m: rng.standard_normal(n) for m in MODALITIES}
    shared = rng.standard_normal(n)
    nuis = {m: rng.standard_normal((n, _N_NUISANCE)) for m in MODALITIES}
    out: dict[str, Any] = {}
    for m, t, d in zip(MODALITIES, seq_lens, dims, strict=True):
        dirs, weights = world[m]
        z = np.concatenate([lat[m][:, None], nuis[m], shared[:, None]], axis=1)
        z = z.astype(np.float32)  # (n, k)
        x = np.empty((n, t, d), dtype=np.float32)
        step = max(1, _CHUNK_ELEMS // (t * d))
        for i in range(0, n, step):
            j = min(n, i + step)
            chunk = rng.standard_normal((j - i, t, d), dtype=np.float32)
            chunk *= np.float32(noise)
            # sum_k z[n,k] * w[k,t] * u[k,d], in float32, chunk-sized temporaries only
            chunk += np.einsum("nk,kt,kd->ntd", z[i:j], weights, dirs, optimize=True)
            x[i:j] = chunk
        if m != "text" and nonfinite_rate > 0:
            k = int(rng.binomial(x.size, nonfinite_rate))
            if k:
                flat = x.reshape(-1)
                idx = rng.integers(0, x.size, size=k)
                vals = np.where(rng.random(k) < 2 / 3, -np.inf, np.nan).astype(np.float32)
                flat[idx] = vals
        out[m] = x
    if task == "iemocap":
        out["labels"] = _emotion_labels(rng, lat)
    else:
        y, var = LABEL_MODELS[labels](lat["text"], lat["audio"], lat["vision"])
        y = y + _LABEL_NOISE * rng.standard_normal(n)
        total = var + _LABEL_NOISE**2
        y = np.clip(y * (_LABEL_STD / math.sqrt(total)), -LABEL_RANGE, LABEL_RANGE)
        out["labels"] = y.astype(np.float32).reshape(n, 1, 1)
    ids = np.empty((n, 3), dtype=object)
    for i in range(n):  # MOSI style: video id, segment start, segment end, as bytes
        seg = i % 8
        ids[i, 0] = f"syn_{split}_{i // 8:05d}".encode()
        ids[i, 1] = f"{seg * 4.0:.2f}".encode()
        ids[i, 2] = f"{seg * 4.0 + 3.5:.2f}".encode()
    out["id"] = ids
    return out


def make_synthetic(
    preset: str = "tiny",
    seed: int = 0,
    *,
    n_train: int | None = None,
    n_valid: int | None = None,
    n_test: int | None = None,
    seq_lens: tuple[int, int, int] | None = None,
    input_dims: tuple[int, int, int] | None = None,
    nonfinite_rate: float = 1e-3,
    noise: float | None = None,
    labels: str = "fusion",
) -> dict:
    """A raw MulT-format dict, deterministic for ``seed``, whose labels reward fusion.

    Each sample has one latent per modality, embedded along a fixed direction of that
    modality with positive time weights (so pooling recovers it), plus nuisance latents.
    The label mixes all three latents and two pairwise products (see ``_COEF``), so no
    single modality can explain most of it. Audio and vision get ``-inf``/NaN sprinkled
    at ``nonfinite_rate`` like the real files. ``labels`` picks another label model
    (LABEL_MODELS: the search study's tasks); the features are the same for all of them.
    """
    if preset not in PRESETS:
        raise _fail(f"unknown preset {preset!r}; expected one of {', '.join(PRESETS)}")
    cfg = PRESETS[preset]
    sizes = [cfg["n"][i] if v is None else v for i, v in enumerate((n_train, n_valid, n_test))]
    for s, v in zip(SPLITS, sizes, strict=True):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
            raise _fail(f"n_{s}: expected a positive integer, got {v!r}")
    lens = _check_triple("seq_lens", cfg["seq_lens"] if seq_lens is None else seq_lens)
    dims = _check_triple("input_dims", cfg["input_dims"] if input_dims is None else input_dims)
    if not (0.0 <= float(nonfinite_rate) < 1.0):
        raise _fail(f"nonfinite_rate: expected a value in [0, 1), got {nonfinite_rate!r}")
    noise_v = _DEFAULT_NOISE if noise is None else float(noise)
    if not (noise_v >= 0.0 and math.isfinite(noise_v)):
        raise _fail(f"noise: expected a finite value >= 0, got {noise!r}")
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise _fail(f"seed: expected a non-negative integer, got {seed!r}")
    if labels not in LABEL_MODELS:
        raise _fail(f"labels {labels!r}: expected one of {', '.join(LABEL_MODELS)}")
    if labels != "fusion" and cfg["task"] == "iemocap":
        raise _fail(f"labels {labels!r}: preset {preset!r} has emotion labels; label models "
                    f"are for sentiment presets")
    ss = np.random.SeedSequence(int(seed))
    world_ss, *split_ss = ss.spawn(1 + len(SPLITS))
    world = _world(np.random.default_rng(world_ss), lens, dims)
    return {
        s: _make_split(
            np.random.default_rng(sseq),
            s,
            int(n),
            lens,
            dims,
            world,
            cfg["task"],
            noise_v,
            float(nonfinite_rate),
            labels,
        )
        for s, n, sseq in zip(SPLITS, sizes, split_ss, strict=True)
    }
