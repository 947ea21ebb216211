"""Context windows: edges replicate the utterance's own first/last frame, never the neighbour's."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from features.context import ContextWindows, PaddedWindows, padded_rows, splice


@pytest.fixture()
def corpus() -> tuple[torch.Tensor, list[int]]:
    lengths = [30, 1, 0, 4, 25]
    # Frame value encodes (utterance, frame) so any leak across utterances is visible.
    rows = [np.stack([np.full(3, 100.0 * u + t) for t in range(n)]) if n else np.zeros((0, 3))
            for u, n in enumerate(lengths)]
    return torch.from_numpy(np.concatenate(rows).astype(np.float32)), lengths


def test_equals_splice_for_every_frame(corpus: tuple[torch.Tensor, list[int]]) -> None:
    feats, lengths = corpus
    cw = ContextWindows(feats, lengths, left=20, right=5)
    assert cw.output_dim == 26 * 3 and len(cw) == feats.shape[0]
    got = cw(torch.arange(feats.shape[0]))
    want = np.concatenate([splice(m, 20, 5) for m in np.split(feats.numpy(), np.cumsum(lengths)[:-1])])
    np.testing.assert_array_equal(got.numpy(), want)


def test_edges_replicate_and_never_leak(corpus: tuple[torch.Tensor, list[int]]) -> None:
    feats, lengths = corpus
    cw = ContextWindows(feats, lengths, left=20, right=5)
    first_of_utt3 = 31  # utterances 0 (30 frames), 1 (1 frame), 2 (empty) come before
    win = cw(torch.tensor([first_of_utt3, first_of_utt3 + 3, 30])).reshape(3, 26, 3)[..., 0]
    # First frame of utterance 3: 20 left copies of its own frame 0, then frames 0, 1, 2, 3, 3, 3.
    np.testing.assert_array_equal(win[0], [300.0] * 21 + [301, 302, 303, 303, 303])
    # Last frame of utterance 3: frames 0..3 preceded by copies of frame 0, followed by copies of frame 3.
    np.testing.assert_array_equal(win[1], [300.0] * 17 + [300, 301, 302, 303] + [303] * 5)
    # A one-frame utterance is that frame 26 times.
    np.testing.assert_array_equal(win[2], [100.0] * 26)


def test_random_batches_and_dtype(corpus: tuple[torch.Tensor, list[int]]) -> None:
    feats, lengths = corpus
    cw = ContextWindows(feats.half(), torch.tensor(lengths), left=3, right=2)
    idx = torch.randint(0, feats.shape[0], (50,), generator=torch.Generator().manual_seed(0))
    out = cw(idx)
    assert out.dtype == torch.float16 and out.shape == (50, 18)
    full = np.concatenate([splice(m, 3, 2) for m in np.split(feats.numpy(), np.cumsum(lengths)[:-1])])
    np.testing.assert_array_equal(out.float().numpy(), full[idx.numpy()])


def test_splice_shapes() -> None:
    x = np.arange(8, dtype=np.float32).reshape(4, 2)
    out = splice(x, 1, 1)
    assert out.shape == (4, 6)
    np.testing.assert_array_equal(out[0], [0, 1, 0, 1, 2, 3])
    np.testing.assert_array_equal(out[3], [4, 5, 6, 7, 6, 7])
    assert splice(np.zeros((0, 2), dtype=np.float32), 20, 5).shape == (0, 52)


def test_invalid_lengths() -> None:
    with pytest.raises(ValueError, match="sum to"):
        ContextWindows(torch.zeros(10, 2), [4, 5])
    with pytest.raises(ValueError, match="non-negative"):
        ContextWindows(torch.zeros(10, 2), [11, -1])



def test_padded_windows_equal_context_windows_bitwise(corpus: tuple[torch.Tensor, list[int]]) -> None:
    """The training loop's padded gatherer gives every frame the very window of the clamping one, in any dtype."""
    feats, lengths = corpus
    cw = ContextWindows(feats, lengths, left=20, right=5)
    pw = PaddedWindows.build(feats, lengths, left=20, right=5)
    idx = torch.randperm(feats.shape[0], generator=torch.Generator().manual_seed(1))
    assert len(pw) == len(cw) and pw.output_dim == cw.output_dim
    assert torch.equal(pw(idx), cw(idx))
    bf16 = PaddedWindows.build(feats, lengths, left=3, right=2, dtype=torch.bfloat16)
    want = ContextWindows(feats, lengths, left=3, right=2)(idx).to(torch.bfloat16)
    assert bf16.padded.dtype == torch.bfloat16 and torch.equal(bf16(idx), want)


def test_padded_rows_repeat_each_utterances_own_edges() -> None:
    source, rows = padded_rows([2, 0, 1], left=2, right=1)
    # utterance 0 (frames 0, 1): 0 0 | 0 1 | 1; the empty one has no rows; utterance 2 (frame 2): 2 2 | 2 | 2
    assert source.tolist() == [0, 0, 0, 1, 1, 2, 2, 2, 2]
    assert rows.tolist() == [0, 1, 5]
