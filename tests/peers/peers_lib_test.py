"""Tests of the peers benchmark's driver code that need neither torch nor the peers:
the digest every loader is checked with (against `stasis restore --digest`), the
report's arithmetic, and the docs section it rewrites.

Run by ctest (peers_lib_test) with STASIS and STASIS_GENMODEL naming the built binaries.
"""

import json
import os
import subprocess
import sys
import tempfile
import unittest
import xml.etree.ElementTree as ET

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "bench", "peers"))
import peers_lib  # noqa: E402

STASIS = os.environ.get("STASIS", os.path.join(ROOT, "build", "tools", "stasis"))
GENMODEL = os.environ.get("STASIS_GENMODEL", os.path.join(ROOT, "build", "tools", "stasis-genmodel"))


def cell(model, cache, loader, secs, digest_ok=True, nbytes=1_000_000_000, runs=5):
    rs = [{"ok": True, "load_s": s, "peak_rss_bytes": 2e9, "bytes": nbytes,
           "digest_ok": digest_ok} for s in ([secs] * runs if isinstance(secs, float) else secs)]
    return {"model": model, "cache": cache, "loader": loader, "summary": peers_lib.summarize(rs),
            "runs": rs}


class DigestTest(unittest.TestCase):
    """The one check that keeps every loader honest must agree with stasis's own."""

    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.TemporaryDirectory()
        cls.st = os.path.join(cls.dir.name, "tiny.safetensors")
        subprocess.run([GENMODEL, "--preset", "tiny", "--dtype", "bf16", "--seed", "7", "-o",
                        cls.st], check=True, capture_output=True)

    @classmethod
    def tearDownClass(cls):
        cls.dir.cleanup()

    def restore_digest(self, codec, *flags):
        img = os.path.join(self.dir.name, f"tiny.{codec}.stasis")
        subprocess.run([STASIS, "snapshot", self.st, "-o", img, "--codec", codec, "--force",
                        "--quiet"], check=True, capture_output=True)
        r = subprocess.run([STASIS, "restore", "--json", "--digest", img, *flags], check=True,
                           capture_output=True, text=True)
        return json.loads(r.stdout)

    def test_reference_digest_matches_stasis_restore_for_every_codec(self):
        digest, count, nbytes = peers_lib.reference_digest(self.st)
        self.assertRegex(digest, r"^[0-9a-f]{16}$")
        self.assertGreater(count, 5)
        for codec in ("raw", "auto", "zstd"):
            j = self.restore_digest(codec)
            self.assertEqual(j["digest"]["xxh3"], digest, codec)
            self.assertEqual(j["digest"]["tensors"], count)
            self.assertGreaterEqual(j["raw_bytes"], nbytes)  # regions include alignment gaps
            self.assertTrue(j["verified_stored"])

    def test_no_checksums_restores_the_same_bytes_and_says_so(self):
        digest, _, _ = peers_lib.reference_digest(self.st)
        j = self.restore_digest("raw", "--no-checksums")
        self.assertEqual(j["digest"]["xxh3"], digest)
        self.assertFalse(j["verified_stored"])
        self.assertEqual(j["phases"]["verify"], 0)

    def test_digest_changes_with_one_byte(self):
        base, header = peers_lib.read_safetensors_header(self.st)
        with open(self.st, "rb") as f:
            data = bytearray(f.read())
        first = min(v["data_offsets"][0] for k, v in header.items() if k != "__metadata__")
        data[base + first] ^= 1
        other = os.path.join(self.dir.name, "flipped.safetensors")
        with open(other, "wb") as f:
            f.write(data)
        self.assertNotEqual(peers_lib.reference_digest(other)[0],
                            peers_lib.reference_digest(self.st)[0])

    def test_digest_is_order_independent_by_name(self):
        self.assertEqual(peers_lib.combine({"a": 1, "b": 2}), peers_lib.combine({"b": 2, "a": 1}))
        self.assertNotEqual(peers_lib.combine({"a": 1, "b": 2}),
                            peers_lib.combine({"a": 2, "b": 1}))

    def test_not_a_safetensors_file_is_a_clear_error(self):
        bad = os.path.join(self.dir.name, "bad.safetensors")
        with open(bad, "wb") as f:
            f.write(b"\xff" * 8 + b"{}")
        with self.assertRaisesRegex(ValueError, "not plausible"):
            peers_lib.read_safetensors_header(bad)


class ReportTest(unittest.TestCase):
    def result(self):
        cells = [
            cell("m", "cold", "safetensors load_file", [2.0, 2.2, 1.8, 9.0, 2.1]),  # median 2.1
            cell("m", "cold", "torch.load mmap", 1.5),
            cell("m", "cold", "tensorizer", 0.5, digest_ok=False),  # wrong bytes never win
            cell("m", "cold", "stasis restore · zstd image", 1.0),
            cell("m", "cold", "stasis restore · raw image, no checksums", 0.75),
            cell("m", "hot", "safetensors safe_open", 0.1),
            cell("m", "hot", "stasis restore · raw image", 0.2),
        ]
        return {"models": [{"name": "m", "description": "d", "tensors": 3, "bytes": 1e9,
                            "compressed_bytes": 5e8, "compression_ratio": 2.0}],
                "cells": cells, "machine": {"summary": "test machine"}}

    def test_medians_and_ratios(self):
        s = peers_lib.summarize(self.result()["cells"][0]["runs"])
        self.assertEqual(s["load_s"], 2.1)
        self.assertAlmostEqual(s["gb_per_s"], 1e9 / 2.1 / 1e9)
        failed = peers_lib.summarize([{"ok": False, "error": "boom"}])
        self.assertNotIn("load_s", failed)
        self.assertEqual(failed["error"], "boom")

    def test_verdicts_skip_wrong_bytes_and_separate_checked_rows(self):
        v = {(x["model"], x["cache"]): x for x in peers_lib.verdicts(self.result()["cells"])}
        cold = v[("m", "cold")]
        self.assertEqual(cold["peer"], "torch.load mmap")  # not tensorizer: its digest failed
        self.assertEqual(cold["checked"], "stasis restore · zstd image")
        self.assertAlmostEqual(cold["checked_speedup"], 1.5)
        self.assertEqual(cold["stasis"], "stasis restore · raw image, no checksums")
        self.assertAlmostEqual(cold["speedup"], 2.0)
        self.assertAlmostEqual(v[("m", "hot")]["checked_speedup"], 0.5)

    def test_markdown_has_every_row_and_marks_mismatches(self):
        md = peers_lib.render_markdown(self.result())
        for c in self.result()["cells"]:
            self.assertIn(f"| {c['loader']} |", md)
        self.assertIn("0.500 ✗digest", md)
        self.assertIn("**1.50×**", md)
        self.assertIn("ratio 2.000", md)

    def test_svg_is_well_formed_with_one_bar_per_timed_cell(self):
        svg = peers_lib.render_svg(self.result(), "m")
        root = ET.fromstring(svg)
        bars = [e for e in root.iter() if e.get("class") == "bar"]
        self.assertEqual(len(bars), len(self.result()["cells"]))

    def test_replace_section_is_idempotent_and_per_device(self):
        doc = "# Title\n\nintro\n"
        once = peers_lib.replace_section(doc, "cpu figures v1", "cpu")
        self.assertTrue(once.startswith(doc.rstrip("\n")))
        self.assertIn("cpu figures v1", once)
        twice = peers_lib.replace_section(once, "cpu figures v2", "cpu")
        self.assertNotIn("v1", twice)
        self.assertEqual(twice.count(peers_lib.markers("cpu")[0]), 1)
        both = peers_lib.replace_section(twice + "\n## After\n", "gpu figures", "cuda")
        both = peers_lib.replace_section(both, "cpu figures v3", "cpu")
        self.assertIn("gpu figures", both)
        self.assertIn("cpu figures v3", both)
        self.assertIn("## After", both)
        self.assertEqual(peers_lib.replace_section(both, "cpu figures v3", "cpu"), both)


if __name__ == "__main__":
    unittest.main()
