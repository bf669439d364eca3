"""Templates shared by the files of a logdir (scalars.TemplateStore): every file decodes exactly
what a plain proto parse of its own records gives, while a template learnt in one file serves
the others from their first record. A metadata-less TF2 tensor is a scalar or not by a decision
of its own file, so no template whose decoding depends on such a decision is shared."""

from __future__ import annotations

import random
import struct

from test_scalars import PlainDecoder, bits, random_events
from writers import event, file_version, metadata, simple, tensor, tensor_value, write_events

from gradwatch.events import scalars
from gradwatch.events.logdir import LogdirReader
from gradwatch.events.scalars import EventFileReader, ScalarDecoder

WALL = 1_700_000_000.0


def at(step: int, *values) -> bytes:
    """An Event of ``values`` laid out as the template fast path reads it (wall_time, step)."""
    return event(values, step=step, wall_time=WALL)


def ft(tag: str, x: float, meta=None):
    """A 0-d float tensor value."""
    return tensor_value(tag, tensor(float_val=[x]), meta)


def plain_points(path: str) -> list:
    """The file's points by a proto parse of every record: the truth for that file alone."""
    reader = EventFileReader(path, on_problem=lambda *a: None)
    reader.decoder = PlainDecoder()
    return [(tag, step, bits(wt), bits(v)) for tag, step, wt, v in reader.read(final=True)]


def by_tag(points: list) -> dict[str, list]:
    """Each tag's points in file order: what columns keep of the order of the points."""
    out: dict[str, list] = {}
    for p in points:
        out.setdefault(p[0], []).append(p)
    return out


def expected(points: list, columns: bool):
    return by_tag(points) if columns else points


def shared_points(logdir: str, order: list[str], columns: bool) -> dict[str, list]:
    """Each file's points read through one LogdirReader (shared templates), files in ``order``."""
    reader = LogdirReader(logdir, problems=lambda *a: None)
    reader.refresh()
    out = {}
    for path in order:
        _, r = reader.readers[path]
        if columns:
            got = []
            for batch in r.read_columns(final=True):
                got += [(c.tag, s, bits(w), bits(v)) for c in batch for s, w, v in c.points()]
            out[path] = by_tag(got)
        else:
            out[path] = [(tag, step, bits(wt), bits(v)) for tag, step, wt, v in r.read(final=True)]
    return out


def test_a_file_decodes_from_its_first_record_with_templates_another_file_learnt(tmp_path, monkeypatch):
    for run in ("a", "b"):
        payloads = [file_version()]
        for step in range(1, 200):
            payloads += [event([simple("loss", step / 8)], step=step, wall_time=WALL + step)]
            payloads += [
                event([tensor_value("acc", tensor(float_val=[step]), metadata())], step=step, wall_time=WALL)
            ]
        write_events(str(tmp_path / run / "events.out.tfevents.1.host"), payloads)
    parses = []
    parse = ScalarDecoder._parse
    monkeypatch.setattr(ScalarDecoder, "_parse", lambda self, p: parses.append(p) or parse(self, p))
    reader = LogdirReader(str(tmp_path))
    reader.refresh()
    a, b = sorted(reader.readers)
    assert len(list(reader.read_file(a, final=True))) == 2 * 199
    assert parses  # file a learnt its templates by parsing
    parses.clear()
    assert len(list(reader.read_file(b, final=True))) == 2 * 199
    assert parses == []  # file b parsed nothing: both tags' templates came from file a
    monkeypatch.undo()
    for path in (a, b):
        again = LogdirReader(str(tmp_path))
        again.refresh()
        got = [(t, s, bits(w), bits(v)) for _, t, s, w, v in again.read_file(path, final=True)]
        assert got == plain_points(path)


def test_a_template_that_depends_on_another_tags_plugin_is_not_shared(tmp_path):
    """In file a the tensor "aux" belongs to the histograms plugin, so an event holding "loss"
    and a metadata-less "aux" is one point there; in file b nobody said so: two points."""
    aux = tensor(float_val=[0.5])
    first = [file_version(), event([tensor_value("aux", aux, metadata("histograms"))], step=0)]
    a = [
        *first,
        *(
            event([simple("loss", s / 8), tensor_value("aux", aux)], step=s, wall_time=WALL)
            for s in range(1, 300)
        ),
    ]
    b = [
        file_version(),
        *(
            event([simple("loss", s / 8), tensor_value("aux", aux)], step=s, wall_time=WALL)
            for s in range(1, 300)
        ),
    ]
    pa = write_events(str(tmp_path / "a" / "events.out.tfevents.1.host"), a)
    pb = write_events(str(tmp_path / "b" / "events.out.tfevents.1.host"), b)
    assert len(plain_points(pa)) == 299 and len(plain_points(pb)) == 2 * 299
    reader = LogdirReader(str(tmp_path))
    reader.refresh()
    list(reader.read_file(pa, final=True))
    # not even learnt for file a: its one point leans on "aux"'s decision, which may change
    # (tests/test_reader_rollback.py)
    assert not reader.readers[pa][1].decoder._template_count
    assert not reader.templates.learnt
    for columns in (False, True):
        got = shared_points(str(tmp_path), [pa, pb], columns)
        assert got[pa] == expected(plain_points(pa), columns)
        assert got[pb] == expected(plain_points(pb), columns)


def test_a_tag_another_file_shared_goes_back_to_scalars_after_another_plugin_took_it(tmp_path):
    """File b gives "t" to another plugin, then back to scalars (metadata on a record a shared
    template decodes), then logs it without metadata: that last point is a scalar too."""
    scalar = metadata()
    a = [
        file_version(),
        *(
            event([tensor_value("t", tensor(float_val=[s]), scalar)], step=s, wall_time=WALL)
            for s in range(1, 200)
        ),
    ]
    b = [
        file_version(),
        at(1, ft("t", 7.0, metadata("histograms"))),
        at(2, ft("t", 8.0, scalar)),
        at(3, ft("t", 9.0)),
    ]
    pa = write_events(str(tmp_path / "a" / "events.out.tfevents.1.host"), a)
    pb = write_events(str(tmp_path / "b" / "events.out.tfevents.1.host"), b)
    assert [p[1] for p in plain_points(pb)] == [2, 3]
    for columns in (False, True):
        got = shared_points(str(tmp_path), [pa, pb], columns)
        assert got[pb] == expected(plain_points(pb), columns)
    reader = LogdirReader(str(tmp_path))
    reader.refresh()
    list(reader.read_file(pa, final=True))
    assert reader.templates.learnt  # file b was read with file a's template


def test_random_logdirs_read_in_any_order_give_each_files_own_points(tmp_path):
    """Random events (every scalar form, damaged records, non-scalar events) in several files,
    some of which give a tag to another plugin somewhere: with shared templates, in any order
    and both ways of reading, each file gives what a plain parse of it gives."""
    rng = random.Random(20261201)
    paths = []
    for i in range(6):
        payloads = random_events(rng, 1500)
        if i % 2:  # a tensor tag of this file belongs to another plugin from some point on
            taken = event([tensor_value("loss/c", tensor(float_val=[1.0]), metadata("histograms"))], step=i)
            payloads.insert(rng.randrange(len(payloads)), taken)
        # the same scalars in every file, so that templates are shared
        payloads += [
            event([simple("lr", struct.unpack("<f", rng.randbytes(4))[0])], step=s) for s in range(50)
        ]
        paths.append(write_events(str(tmp_path / f"run{i}" / "events.out.tfevents.1.host"), payloads))
    want = {p: plain_points(p) for p in paths}
    for order in (paths, paths[::-1], rng.sample(paths, len(paths))):
        got = shared_points(str(tmp_path), order, columns=False)
        assert got == want
        got = shared_points(str(tmp_path), order, columns=True)
        assert got == {p: by_tag(w) for p, w in want.items()}
    reader = LogdirReader(str(tmp_path), problems=lambda *a: None)
    reader.refresh()
    list(reader.read_all(final=True))
    assert reader.templates.learnt  # some templates were shared


def test_a_file_that_gave_a_tag_to_another_plugin_takes_no_shared_template_of_it(tmp_path):
    """File b gives "t" to another plugin before file a shares a template of "t" (the daemon
    reads files in turns): b's later metadata-less "t" tensors stay out, as a parse says."""
    scalar = metadata()
    pa = str(tmp_path / "a" / "events.out.tfevents.1.host")
    pb = str(tmp_path / "b" / "events.out.tfevents.1.host")
    write_events(
        pb, [file_version(), event([tensor_value("t", tensor(float_val=[7.0]), metadata("pr"))], step=1)]
    )
    write_events(
        pa,
        [
            file_version(),
            *(
                event([tensor_value("t", tensor(float_val=[s]), scalar)], step=s, wall_time=WALL)
                for s in range(1, 200)
            ),
        ],
    )
    reader = LogdirReader(str(tmp_path))
    reader.refresh()
    assert list(reader.read_file(pb)) == []
    assert len(list(reader.read_file(pa))) == 199
    assert reader.templates.learnt
    write_events(
        pb,
        [event([tensor_value("t", tensor(float_val=[s]))], step=s, wall_time=WALL) for s in range(2, 9)],
        "ab",
    )
    assert list(reader.read_file(pb, final=True)) == [] == plain_points(pb)


def test_a_logdir_shares_a_bounded_number_of_templates(tmp_path):
    """Every file's decoder takes every shared template: their number is bounded, the rest of a
    file's tags are learnt by the file itself, and its points are the same."""
    n = scalars.MAX_SHARED_TEMPLATES + 20
    paths = []
    for run in ("a", "b"):
        payloads = [at(s, simple(f"tag/{i}", s + i / 8)) for s in range(1, 4) for i in range(n)]
        paths.append(write_events(str(tmp_path / run / "events.out.tfevents.1.host"), payloads))
    reader = LogdirReader(str(tmp_path))
    reader.refresh()
    got = {p: [(t, s, bits(w), bits(v)) for _, t, s, w, v in reader.read_file(p, final=True)] for p in paths}
    assert got == {p: plain_points(p) for p in paths}
    assert len(reader.templates.learnt) == scalars.MAX_SHARED_TEMPLATES
    b = reader.readers[paths[1]][1].decoder
    assert len(b._adopted) == scalars.MAX_SHARED_TEMPLATES and b._template_count == n


def test_no_template_is_shared_from_an_event_that_decides_another_tags_plugin(tmp_path):
    """Events of "a" and an "h" with histograms metadata are one point, "a"'s, in any file, but
    parsing one also gives "h" to the histograms plugin: file b, which gave "h" to the scalars
    plugin first, must take it away again at such an event, which a template never does."""
    both = lambda s: at(s, ft("h", 0.0, metadata("histograms")), simple("a", s / 8))  # noqa: E731
    pa = write_events(str(tmp_path / "a" / "events.out.tfevents.1.host"), [both(s) for s in range(1, 200)])
    b = [at(1, ft("h", 5.0, metadata())), both(2), at(3, ft("h", 6.0))]
    pb = write_events(str(tmp_path / "b" / "events.out.tfevents.1.host"), b)
    assert [p[:2] for p in plain_points(pb)] == [("h", 1), ("a", 2)]
    for columns in (False, True):
        got = shared_points(str(tmp_path), [pa, pb], columns)
        assert got[pa] == expected(plain_points(pa), columns)
        assert got[pb] == expected(plain_points(pb), columns)
