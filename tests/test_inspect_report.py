"""`sae inspect` and `sae report`: sae_core.tools.summary and sae_core.tools.report.

Expected numbers are written by hand or computed with plain Python loops (and numpy's percentile
and corrcoef) from the file's lists, never by the code under test.
"""

import base64
import json
import math
import re
import statistics

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sae_core import trajectory as tj
from sae_core.segments import segment_lengths
from sae_core.tools import summary as insp
from sae_core.tools.report import token_texts, write_report
from sae_core.tools.summary import counts_stats, inspect_file

NAN, INF = float("nan"), float("inf")

# Rows: 4 tokens; 3 (token 1 masked); 0; 5 (tokens 0 and 3 masked); 2 (both masked).
LENGTHS = [4, 3, 0, 5, 2]
MASK = [[1, 1, 1, 1], [1, 0, 1], [], [0, 1, 1, 0, 1], [0, 0]]
LOGPROBS = [[-0.1, -2.0, -0.5, -3.0], [-2.0, NAN, -0.05], [], [-5.0, -0.01, -1.7, -4.0, -1.0], [NAN, -1.0]]
VALUES = [[0.5, 0.25, 0.75, 1.0], [0.1, NAN, 0.3], [], [NAN, 0.2, -0.4, NAN, 0.6], [NAN, NAN]]
REF = [[-INF, 0.0, NAN, 1.0], [0.0, 0.0, 0.0], [], [INF, 0.0, 0.0, 0.0, 0.0], [0.0, 0.0]]  # non-standard


def flat(rows):
    return np.array([x for r in rows for x in r], dtype=np.float64)


def small_table(outputs=True):
    offsets = np.concatenate([[0], np.cumsum(LENGTHS)])
    t = tj.from_ragged(offsets, {"response_ids": np.arange(offsets[-1]) + 100,
                                 "response_mask": flat(MASK) != 0, "logprobs": flat(LOGPROBS),
                                 "values": flat(VALUES), "ref_logprobs": flat(REF)},
                       {"trajectory_id": [f"t{i}" for i in range(5)], "reward": [1.0, 0.0, 1.0, 0.5, 1.0],
                        "score": [NAN, 1.0, 2.0, INF, 0.0]})
    # a list column of another length than the responses' (a per-row embedding)
    t = t.append_column("embedding", pa.array([[NAN, 1.0], [2.0, 3.0], [], [INF], [1.0]],
                                              pa.large_list(pa.float32())))
    if outputs:
        t = tj.compute(t, estimator="gae", suffix="_gae", backend="reference")
        t = tj.compute(t, estimator="sae", suffix="_sae", threshold=0.2, backend="reference")
    return t


@pytest.fixture
def small_file(tmp_path):
    return tj.write_table(small_table(), tmp_path / "small.parquet")


def hand_segments(boundaries, mask):
    """Segment lengths (valid tokens) and boundary counts, one token at a time."""
    lengths, counts = [], []
    for b_row, m_row in zip(boundaries, mask):
        count, current = 0, None
        for b, m in zip(b_row, m_row):
            if not m:
                continue
            if b:
                count += 1
            if b or current is None:
                if current is not None:
                    lengths.append(current)
                current = 0
            current += 1
        if current is not None:
            lengths.append(current)
        counts.append(count)
    return lengths, counts


def logprob_boundaries(p):
    return [[bool(m) and lp < math.log(p) for lp, m in zip(lr, mr)] for lr, mr in zip(LOGPROBS, MASK)]


def valid_values(table, name):
    return [x for r, m in zip(table.column(name).to_pylist(), MASK) for x, v in zip(r, m) if v]


# ----------------------------------------------------------------------------------------------
# inspect


def test_segments_by_hand():
    # row 0: boundaries at t1, t3; row 1: at its first valid token; row 3: at t2, with masked t3 inside
    lengths, counts = hand_segments(logprob_boundaries(0.2), MASK)
    assert lengths == [1, 2, 1, 2, 1, 2] and counts == [2, 1, 0, 1, 0]
    offsets = np.concatenate([[0], np.cumsum(LENGTHS)])
    got, per_row = segment_lengths(offsets, flat(logprob_boundaries(0.2)) != 0, flat(MASK) != 0)
    assert got.tolist() == lengths and per_row.tolist() == counts
    assert got.dtype == np.int32 and per_row.dtype == np.int32
    # boundaries on masked tokens do not count; without a mask every token is valid
    got, per_row = segment_lengths(np.array([0, 3, 3, 5]), np.array([1, 0, 1, 1, 1], bool))
    assert got.tolist() == [2, 1, 1, 1] and per_row.tolist() == [2, 0, 2]
    got, per_row = segment_lengths(np.array([0, 2]), np.array([0, 1], bool), np.array([1, 0], bool))
    assert got.tolist() == [1] and per_row.tolist() == [0]
    got, per_row = segment_lengths(np.array([0]), np.zeros(0, bool))
    assert got.size == 0 and per_row.size == 0


def test_counts_stats_match_numpy():
    rng = np.random.default_rng(1)
    for n in (1, 2, 7, 100):
        x = rng.integers(0, 30, n)
        s = counts_stats(np.bincount(x))
        p50, p90 = np.percentile(x, [50, 90])
        assert (s.count, s.min, s.max) == (n, x.min(), x.max())
        assert s.mean == pytest.approx(x.mean())
        assert s.p50 == pytest.approx(p50) and s.p90 == pytest.approx(p90)
    assert counts_stats(np.zeros(3, np.int64)).count == 0


def test_inspect_numbers_by_hand(small_file):
    table = tj.read_table(small_file)
    ins = inspect_file(small_file, batch_size=2)  # rows split over batches
    assert (ins.rows, ins.tokens, ins.valid_tokens) == (5, 14, 9)
    assert (ins.empty_rows, ins.rows_without_valid) == (1, 2)
    assert ins.row_lengths.tolist() == LENGTHS and ins.row_valid.tolist() == [4, 2, 0, 3, 0]
    # lengths [0, 2, 3, 4, 5] and valid [0, 0, 2, 3, 4]: p90 = 4 + 0.6 * (5 - 4) and 3 + 0.6 * (4 - 3)
    assert ins.lengths == insp.LengthStats(5, 0, 2.8, 3, pytest.approx(4.6), 5)
    assert ins.valid_lengths == insp.LengthStats(5, 0, 1.8, 2, pytest.approx(3.6), 4)

    assert [s.name for s in ins.sets] == ["advantages_gae", "advantages_sae"]
    gae, sae = ins.sets
    assert sae.params["estimator"] == "sae" and sae.params["threshold"] == 0.2 and gae.estimator == "gae"
    for s in ins.sets:
        adv = valid_values(table, s.name)
        a = s.advantages
        assert a.count == 9 and a.exact
        assert a.mean == pytest.approx(sum(adv) / len(adv), abs=1e-12)
        assert a.std == pytest.approx(statistics.pstdev(adv), abs=1e-12)
        assert (a.min, a.max) == (min(adv), max(adv))
        assert [a.p01, a.p50, a.p99] == pytest.approx(list(np.percentile(adv, [1, 50, 99])))
        ret = valid_values(table, "returns" + s.suffix)
        assert s.returns_mean == pytest.approx(sum(ret) / len(ret))
    # sae's boundaries are the logprob rule's at its threshold; gae has one segment per row
    lengths, counts = hand_segments(table.column("boundaries_sae").to_pylist(), MASK)
    assert lengths == [1, 2, 1, 2, 1, 2]
    assert sae.segments.boundaries == 4 and sae.segments.fraction == pytest.approx(4 / 9)
    assert sae.segments.row_boundaries.tolist() == counts
    assert sae.segments.lengths == insp.LengthStats(6, 1, 1.5, 1.5, 2, 2)
    assert gae.segments.boundaries == 0
    assert gae.segments.lengths == insp.LengthStats(3, 2, 3, 3, pytest.approx(3.8), 4)
    assert np.bincount([4, 2, 3]).tolist() == gae.segments.counts.tolist()

    assert [t.threshold for t in ins.thresholds] == [0.05, 0.1, 0.2, 0.5]
    assert [t.recorded_by for t in ins.thresholds] == [(), (), ("advantages_sae",), ()]
    for t in ins.thresholds:
        lengths, counts = hand_segments(logprob_boundaries(t.threshold), MASK)
        assert t.segments.boundaries == sum(counts) and t.segments.valid_tokens == 9
        assert t.segments.row_boundaries.tolist() == counts
        assert np.repeat(np.arange(t.segments.counts.size), t.segments.counts).tolist() == sorted(lengths)
        assert t.segments.lengths.mean == pytest.approx(sum(lengths) / len(lengths))
        assert t.segments.lengths.p90 == pytest.approx(np.percentile(lengths, 90))

    (corr,) = ins.correlations
    assert (corr.a, corr.b, corr.tokens) == ("advantages_gae", "advantages_sae", 9)
    assert corr.r == pytest.approx(np.corrcoef(valid_values(table, "advantages_gae"),
                                               valid_values(table, "advantages_sae"))[0, 1], abs=1e-12)

    nonfinite = {n.column: (n.level, n.nan, n.inf, n.nan_valid, n.inf_valid) for n in ins.nonfinite}
    assert nonfinite["values"] == ("token", 5, 0, 0, 0)
    assert nonfinite["logprobs"] == ("token", 2, 0, 0, 0)
    assert nonfinite["ref_logprobs"] == ("token", 1, 2, 1, 1)
    assert nonfinite["embedding"] == ("token", 1, 1, None, None)  # not the responses' lengths
    assert nonfinite["score"] == ("row", 1, 1, None, None)
    assert nonfinite["reward"] == ("row", 0, 0, None, None)
    assert nonfinite["advantages_sae"][1:] == (0, 0, 0, 0)
    assert "response_ids" not in nonfinite and "boundaries_sae" not in nonfinite


def test_batches_do_not_change_the_numbers(small_file):
    def close(a, b):  # equal, floats up to rounding (merged batch moments)
        if isinstance(a, dict):
            return a.keys() == b.keys() and all(close(a[k], b[k]) for k in a)
        if isinstance(a, list):
            return len(a) == len(b) and all(close(x, y) for x, y in zip(a, b))
        return a == pytest.approx(b, rel=1e-12, abs=1e-12) if isinstance(a, float) else a == b

    one, many = inspect_file(small_file, batch_size=1).to_dict(), inspect_file(small_file).to_dict()
    assert close(one, many)


def test_extra_thresholds_and_json(small_file):
    ins = inspect_file(small_file, thresholds=(0.3,))
    assert [t.threshold for t in ins.thresholds] == [0.2, 0.3]  # the file's own is added
    d = json.loads(json.dumps(ins.to_dict(), allow_nan=False))
    assert d["rows"] == 5 and d["sets"][1]["params"]["threshold"] == 0.2
    assert d["thresholds"][0]["fraction"] == pytest.approx(4 / 9) and d["thresholds"][0]["segments"] == 6
    text = ins.format()
    for word in ("advantages_sae", "boundaries_sae", "logprobs < log 0.2 *", "ref_logprobs", "44.44%", "0.2"):
        assert word in text
    with pytest.raises(ValueError, match="thresholds"):
        inspect_file(small_file, thresholds=(0.0,))


def test_quantiles_from_a_sample_beyond_its_size(small_file, monkeypatch):
    rng = np.random.default_rng(0)
    offsets = np.arange(0, 4001, 100)
    adv = rng.normal(size=4000)
    t = tj.from_ragged(offsets, {"response_ids": np.zeros(4000, np.int32), "advantages": adv},
                       {"trajectory_id": [str(i) for i in range(40)], "reward": np.zeros(40)})
    path = tj.write_table(t, small_file.parent / "big.arrow")
    monkeypatch.setattr(insp, "SAMPLE_SIZE", 500)
    a = inspect_file(path, batch_size=7).sets[0].advantages
    x = adv.astype(np.float32).astype(np.float64)
    assert not a.exact and a.count == 4000
    assert (a.min, a.max) == (x.min(), x.max()) and a.mean == pytest.approx(x.mean(), abs=1e-12)
    assert a.std == pytest.approx(x.std(), rel=1e-12)
    assert abs(a.p50 - np.median(x)) < 0.2 and abs(a.p99 - np.percentile(x, 99)) < 0.5
    assert "uniform sample" in inspect_file(path).format()


def test_zero_rows(tmp_path):
    for name, t in (("e.parquet", small_table().slice(0, 0)), ("e.arrow", small_table(False).slice(0, 0))):
        ins = inspect_file(tj.write_table(t, tmp_path / name))
        assert (ins.rows, ins.tokens, ins.valid_tokens) == (0, 0, 0)
        assert ins.lengths.count == 0 and math.isnan(ins.lengths.mean)
        assert all(t.segments.segments == 0 and math.isnan(t.segments.fraction) for t in ins.thresholds)
        assert all(s.advantages.count == 0 for s in ins.sets)
        assert all(math.isnan(c.r) and c.tokens == 0 for c in ins.correlations)
        json.dumps(ins.to_dict(), allow_nan=False)
        assert "rows 0" in ins.format()


def test_no_outputs_no_logprobs_no_mask(tmp_path):
    t = small_table(False).drop_columns(["logprobs", "response_mask", "ref_logprobs", "values"])
    ins = inspect_file(tj.write_table(t, tmp_path / "plain.parquet"))
    assert ins.sets == () and ins.thresholds == () and ins.correlations == () and not ins.has_logprobs
    assert ins.valid_tokens == ins.tokens == 14 and ins.rows_without_valid == 1  # the empty row
    text = ins.format()
    assert "output sets: none" in text and "no logprobs column" in text


def test_bad_files_raise_trajectory_errors(tmp_path):
    with pytest.raises(tj.TrajectoryError, match="no such file"):
        inspect_file(tmp_path / "missing.parquet")
    t = small_table(False)
    values = t.column("values").to_pylist()
    values[3][1] = NAN  # a valid token
    pq.write_table(t.set_column(t.schema.get_field_index("values"), "values",
                                pa.array(values, pa.large_list(pa.float32()))), tmp_path / "bad.parquet")
    with pytest.raises(tj.TrajectoryError, match="values.*row 3"):
        inspect_file(tmp_path / "bad.parquet")


# ----------------------------------------------------------------------------------------------
# report


def token_views(page):
    """{row: [(t, classes, text)]} of the token view's spans."""
    views = {}
    for row, body in re.findall(r'<div class="tokens" data-row="(\d+)">(.*?)</div>', page, re.S):
        spans = re.findall(r'<span class="([^"]*)" title="t=(\d+)[^"]*">(.*?)</span>', body, re.S)
        views[int(row)] = [(int(t), cls.split(), text) for cls, t, text in spans]
    return views


def check_self_contained(page, images):
    assert "http://" not in page and "https://" not in page
    assert "<script" not in page and "<link" not in page and "@import" not in page and "url(" not in page
    assert all(v.startswith("data:") for v in re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', page))
    uris = re.findall(r'<img [^>]*src="data:image/png;base64,([^"]+)"', page)
    assert len(uris) == images
    assert all(base64.b64decode(u)[:8] == b"\x89PNG\r\n\x1a\n" for u in uris)


def test_report_marks_the_files_boundaries(tmp_path):
    rng = np.random.default_rng(3)
    lengths = rng.integers(1, 300, 12)
    lengths[4] = 0
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    n = int(offsets[-1])
    t = tj.from_ragged(offsets, {"response_ids": rng.integers(0, 50, n), "response_mask": rng.random(n) < 0.9,
                                 "logprobs": -rng.exponential(1.0, n), "values": rng.normal(size=n)},
                       {"trajectory_id": [f"r{i}" for i in range(12)], "reward": rng.random(12)})
    t = tj.compute(t, estimator="gae", suffix="_gae")
    t = tj.compute(t, estimator="sae", suffix="_sae", threshold=0.3)
    path = tj.write_table(t, tmp_path / "r.parquet")
    out = tmp_path / "out" / "report.html"
    out.parent.mkdir()
    out.write_text("old")
    assert write_report(path, out, responses=5, max_tokens=120) == out  # replaces it
    assert [p.name for p in out.parent.iterdir()] == ["report.html"]  # no temporary file left
    page = out.read_text()
    check_self_contained(page, images=3)
    views = token_views(page)
    assert len(views) == 5
    assert int(np.argmax(lengths)) in views and int(np.argmin(np.where(lengths > 0, lengths, 999))) in views
    bnd, mask = t.column("boundaries_sae").to_pylist(), t.column("response_mask").to_pylist()
    for row, spans in views.items():
        L = int(lengths[row])
        shown = [s[0] for s in spans]
        assert shown == (list(range(L)) if L <= 120 else list(range(80)) + list(range(L - 40, L)))
        assert [t_ for t_, cls, _ in spans if "b" in cls] == [t_ for t_ in shown if bnd[row][t_]]
        assert [t_ for t_, cls, _ in spans if "m" in cls] == [t_ for t_ in shown if not mask[row][t_]]
        ids = np.array(t.column("response_ids")[row].as_py())
        assert [text for _, _, text in spans] == [str(i) for i in ids[shown]]
    assert "tokens not shown" in page


def test_report_escapes_tokens(small_file, tmp_path):
    class Evil:
        def decode(self, ids, **kw):
            return f'<b>&"{ids[0]}\n'

    page = write_report(small_file, tmp_path / "e.html", tokenizer=Evil()).read_text()
    check_self_contained(page, images=3)
    views = token_views(page)
    assert sorted(views) == [0, 1, 3]  # the rows with a valid token
    assert views[0][0][2] == "&lt;b&gt;&amp;&quot;100\u21b5\n"
    assert "<b>&" not in page
    assert token_texts(np.array([7, 8])) == ["7", "8"]


def test_report_without_outputs_or_rows(tmp_path):
    t = small_table(False)
    page = write_report(tj.write_table(t, tmp_path / "a.parquet"), tmp_path / "a.html").read_text()
    check_self_contained(page, images=2)  # response lengths, segment lengths
    views = token_views(page)
    bnd = logprob_boundaries(0.2)  # the logprob rule at the paper's threshold marks them
    for row, spans in views.items():
        assert [t_ for t_, cls, _ in spans if "b" in cls] == [t_ for t_, b in enumerate(bnd[row]) if b]
    assert "no advantages column" in page
    plain = t.drop_columns(["logprobs"])
    page = write_report(tj.write_table(plain, tmp_path / "b.parquet"), tmp_path / "b.html").read_text()
    check_self_contained(page, images=1)
    page = write_report(tj.write_table(small_table().slice(0, 0), tmp_path / "c.parquet"),
                        tmp_path / "c.html").read_text()
    check_self_contained(page, images=0)
    assert token_views(page) == {} and "No response with a token" in page


def test_report_with_a_transformers_tokenizer(small_file, tmp_path, monkeypatch):
    tokenizers = pytest.importorskip("tokenizers")
    transformers = pytest.importorskip("transformers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # built here: nothing to download
    vocab = {f"w{i}": i for i in range(100)}
    vocab.update({"<unk>": 100, "<b>": 101, "a": 102, "b": 103, "&x": 104})
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>")
    fast.save_pretrained(tmp_path / "tok")
    page = write_report(small_file, tmp_path / "t.html", tokenizer=tmp_path / "tok").read_text()
    views = token_views(page)
    assert [text for _, _, text in views[0]] == ["&lt;unk&gt;", "&lt;b&gt;", "a", "b"]  # ids 100..103
    assert [text for _, _, text in views[1]][0] == "&amp;x"  # id 104
    assert "decoded text" in page
    with pytest.raises(ValueError, match="cannot load a tokenizer"):
        write_report(small_file, tmp_path / "x.html", tokenizer=tmp_path / "missing")
    # -1 raised OverflowError inside the tokenizer (issue 16); ids past the vocabulary show alike
    t = with_ids(small_table(), [-1, 2**31 - 1, 100, 2**40] + list(range(10)))
    page = write_report(tj.write_table(t, tmp_path / "ids.parquet"), tmp_path / "ids.html",
                        tokenizer=tmp_path / "tok").read_text()
    assert [text for _, _, text in token_views(page)[0]] == [
        "\u27e8-1?\u27e9", "\u27e82147483647?\u27e9", "&lt;unk&gt;", f"\u27e8{2**40}?\u27e9"]


# ----------------------------------------------------------------------------------------------
# files that stopped inspect or report with a traceback (issue 16)


def with_ids(t, ids):
    """`t` with its token ids replaced by `ids` (one flat list, in row order), as int64."""
    offsets = t.column("response_ids").combine_chunks().offsets
    arr = pa.LargeListArray.from_arrays(offsets, pa.array(ids, pa.int64()))
    return t.set_column(t.schema.get_field_index("response_ids"), "response_ids", arr)


def test_ids_a_tokenizer_cannot_decode_are_placeholders(tmp_path):
    """A token id of -1 (a padding id left in) gave an OverflowError traceback from the fast
    tokenizer; ids past the vocabulary and ids the tokenizer's decode refuses, likewise."""
    class Strict:  # like a fast tokenizer: refuses what it cannot convert, in batch_decode too
        def __len__(self):
            return 200

        def batch_decode(self, ids, **kw):
            return [self.decode(i, **kw) for i in ids]

        def decode(self, ids, **kw):
            if ids[0] < 0:
                raise OverflowError("out of range integral type conversion attempted")
            if ids[0] == 150:
                raise IndexError("no such token")
            return f"w{ids[0]}"

    assert token_texts(np.array([5, -1, 150, 200, 2**40, 7]), Strict()) == [
        "w5", "\u27e8-1?\u27e9", "\u27e8150?\u27e9", "\u27e8200?\u27e9", f"\u27e8{2**40}?\u27e9", "w7"]
    t = with_ids(small_table(), [-1, 5, 150, 2**40] + list(range(10)))
    page = write_report(tj.write_table(t, tmp_path / "ids.parquet"), tmp_path / "ids.html",
                        tokenizer=Strict()).read_text()
    assert [text for _, _, text in token_views(page)[0]] == ["\u27e8-1?\u27e9", "w5", "\u27e8150?\u27e9",
                                                             f"\u27e8{2**40}?\u27e9"]
    assert "\u27e8id?\u27e9: an id the tokenizer cannot decode" in page


def test_mathtext_in_a_column_name(tmp_path):
    """A `$...$` in an output set's name went to matplotlib's mathtext parser, which raised
    (ParseException) and killed the report. The names show as written."""
    t = small_table(False)
    names = ["_$x^$", "_$$", "_$\\frac$", "_a$b"]
    for suffix in names:
        t = tj.compute(t, estimator="sae", suffix=suffix, threshold=0.2, backend="reference")
    page = write_report(tj.write_table(t, tmp_path / "m.parquet"), tmp_path / "m.html").read_text()
    check_self_contained(page, images=3)
    for suffix in names:
        assert f"<td class=\"l\">advantages{suffix}</td>" in page


def test_a_recorded_threshold_out_of_range(tmp_path):
    """Metadata recording threshold <= 0 (edited, or another tool's) gave "math domain error":
    that entry is set aside with a warning (`read_info`), the set shows why, and no threshold is
    counted at it."""
    t = small_table()
    doc = json.loads(t.schema.metadata[b"sae_rl"])
    for bad in (0.0, -0.5):
        doc["estimators"]["advantages_sae"]["threshold"] = bad
        path = tmp_path / f"t{bad}.parquet"
        pq.write_table(t.replace_schema_metadata({b"sae_rl": json.dumps(doc).encode()}), path)
        with pytest.warns(tj.TrajectoryWarning, match="advantages_sae"):
            ins = inspect_file(path)
        sae = ins.sets[1]
        assert sae.params == {} and "threshold" in sae.invalid
        assert [t_.threshold for t_ in ins.thresholds] == [0.05, 0.1, 0.2, 0.5]
        assert all(t_.recorded_by == () for t_ in ins.thresholds)
        assert "(recorded parameters not valid: threshold" in ins.format()
        with pytest.warns(tj.TrajectoryWarning):
            page = write_report(path, tmp_path / "t.html").read_text()
        assert "recorded parameters not valid" in page


def test_report_out_is_checked_before_reading(small_file, tmp_path):
    (tmp_path / "d").mkdir()
    with pytest.raises(IsADirectoryError, match="is a directory"):
        write_report(tmp_path / "missing.parquet", tmp_path / "d")  # the input is not even opened
    with pytest.raises(NotADirectoryError, match="is not a directory"):
        write_report(small_file, small_file / "r.html")


# the text tables (rich) and several files in one report


def test_text_table_keeps_columns_apart_and_numbers_right_aligned(monkeypatch):
    from sae_core.tools.summary_format import text_table

    monkeypatch.setenv("COLUMNS", "20")  # a narrow terminal must not wrap what goes to a pipe or a file
    big = "1" * 40
    lines = text_table(["name", "a", "b"], [["  x", "1", big], ["  longer-label", "22", "[bold]3"]])
    # widths by hand: 14 (the label), 2, 40; two spaces between columns; no trailing spaces
    assert lines == ["name" + " " * 10 + "   a  " + " " * 39 + "b",
                     "  x" + " " * 11 + "   1  " + big,
                     "  longer-label  22  " + " " * 33 + "[bold]3"]
    assert text_table(None, [["  a", "b c"]], left=2) == ["  a  b c"]
    with pytest.raises(ValueError, match="rows must have 3 cells"):
        text_table(["a", "b", "c"], [["1", "2"]])


def test_inspect_table_never_runs_columns_together(tmp_path):
    """Values as wide as the format allows and a set name of 90 characters: every row of the
    advantages table still splits into its name and 8 numbers, on one line (no wrap at 80)."""
    t = small_table(False)
    suffix = "_" + "x" * 79
    huge = pa.array([[-1.234567e150 * (i + 1) for i in range(n)] for n in LENGTHS], pa.large_list(pa.float64()))
    t = t.append_column("advantages" + suffix, huge).append_column("returns" + suffix, huge)
    text = inspect_file(tj.write_table(t, tmp_path / "wide.parquet")).format()
    assert "\x1b" not in text
    row = next(line for line in text.splitlines() if line.startswith("  advantages" + suffix) and "e+150" in line)
    cells = row.split()
    assert cells[0] == "advantages" + suffix and len(cells) == 9 and len(row) > 80
    assert all(re.fullmatch(r"-?[0-9.]+e\+15[0-9]", c) for c in cells[1:]), cells
    header = next(line for line in text.splitlines() if line.startswith("advantages ") and "ret mean" in line)
    # numbers right-aligned: each column's title ends where its numbers end
    title_ends = [m.end() for m in re.finditer(r"mean|std|min|p01|p50|p99|max|ret mean", header)]
    assert title_ends == [m.end() for m in re.finditer(r"\S+", row)][1:]
