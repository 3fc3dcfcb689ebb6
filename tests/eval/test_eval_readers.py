"""Readers: published schemas read back; placeholders rewritten for the backbone; UniIR/ViDoRe rules."""

from __future__ import annotations

import json

import pytest

from vlmbed.data.mbeir import InstructionPicker, format_string, query_item, read_instructions, read_qrels
from vlmbed.data.mmeb import MMEBFormatError, mmeb_item, read_mmeb_dataset
from vlmbed.data.vidore import read_beir, read_qa
from vlmbed.eval.synthetic import write_vidore_beir, write_vidore_qa


# ----------------------------------------------------------------------------- MMEB
def test_mmeb_rows_read_verbatim_with_positive_first(mmeb_dir):
    import pyarrow.parquet as pq

    rows = pq.read_table(mmeb_dir / "OK-VQA" / "test-00000-of-00001.parquet").to_pylist()
    examples = read_mmeb_dataset(mmeb_dir, "OK-VQA")
    assert len(examples) == len(rows)
    ex, row = examples[0], rows[0]
    assert ex.positive.text == row["tgt_text"][0]
    assert [c.text for c in ex.negatives] == row["tgt_text"][1:]
    assert ex.query.image == mmeb_dir / "eval_images" / row["qry_img_path"]


def test_mmeb_placeholder_becomes_the_backbone_image_tokens(mmeb_dir, eval_embedder):
    """Rendered with the model's template, the query is the parquet string with <|image_1|> replaced."""
    import pyarrow.parquet as pq

    tok = eval_embedder.adapter.image_placeholder
    for name in ("OK-VQA", "MSCOCO_t2i", "RefCOCO"):
        row = pq.read_table(mmeb_dir / name / "test-00000-of-00001.parquet").to_pylist()[0]
        ex = read_mmeb_dataset(mmeb_dir, name)[0]
        fmt = eval_embedder.encoder.format(ex.query, "query").removesuffix(eval_embedder.adapter.eos_token)
        assert fmt == row["qry_text"].replace("<|image_1|>", tok if row["qry_img_path"] else "")
        cand = eval_embedder.encoder.format(ex.positive, "document").removesuffix(eval_embedder.adapter.eos_token)
        assert cand == row["tgt_text"][0].replace("<|image_1|>", tok if row["tgt_img_path"][0] else "")


def test_mmeb_placeholder_in_the_middle_keeps_text_on_both_sides(tmp_path):
    item = mmeb_item("Look: <|image_1|> what is it?\n", "x.png", tmp_path, "row")
    assert (item.instruction, item.text, item.image) == ("Look: ", " what is it?\n", tmp_path / "x.png")
    assert mmeb_item("<|image_1|>\nno image", "", tmp_path, "row").text == "\nno image"


def test_mmeb_other_layouts_get_a_clear_error(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "OK-VQA").mkdir()
    pq.write_table(pa.table({"qry_inst": ["x"], "qry_text": ["q"], "qry_img_path": [""], "tgt_inst": [""],
                             "tgt_text": [["a"]], "tgt_img_path": [[""]]}), tmp_path / "OK-VQA" / "t.parquet")
    with pytest.raises(MMEBFormatError, match="MMEB_Test_Instruct"):
        read_mmeb_dataset(tmp_path, "OK-VQA")
    with pytest.raises(FileNotFoundError, match="huggingface-cli download"):
        read_mmeb_dataset(tmp_path, "GQA")


# ----------------------------------------------------------------------------- ViDoRe
def test_vidore_beir_ids_grades_and_languages(tmp_path):
    write_vidore_beir(tmp_path / "v2", queries=3, docs=5, languages=["english", "german"], graded=True)
    data = read_beir(tmp_path / "v2")
    assert data.query_ids == ["0", "1", "2", "100", "101", "102"]
    assert data.languages == ["english"] * 3 + ["german"] * 3
    assert data.corpus_ids[0] == "10" and isinstance(data.corpus_images[0], bytes)
    assert data.qrels["0"] == {"10": 3, "11": data.qrels["0"]["11"], "12": 0}  # grade 0 kept, never binarised
    assert set(data.qrels["0"].values()) - {0, 1, 2, 3} == set()


def test_vidore_beir_duplicate_qrels_keep_the_highest_grade(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = write_vidore_beir(tmp_path / "d", queries=2, docs=3)
    path = folder / "qrels" / "test-00000-of-00001.parquet"
    pq.write_table(pa.table({"query-id": [0, 0, 1], "corpus-id": [10, 10, 11], "score": [1.0, 2.0, 1.0]}), path)
    assert read_beir(folder).qrels == {"0": {"10": 2}, "1": {"11": 1}}


def test_vidore_qa_reading_dedups_queries_and_uses_the_last_row(tmp_path):
    folder = write_vidore_qa(tmp_path / "qa", rows=8)
    data = read_qa(folder, "vidore_qa")
    assert len(data.query_ids) == len(set(data.query_ids)) == 6  # row 3 has no query, row 7 repeats row 0's
    first = data.query_ids[0]
    assert data.qrels[first] == {"report_page_7.png": 1}  # the repeated query's last row
    assert data.corpus_ids == [f"report_page_{r}.png" for r in range(8)]
    beir = read_qa(folder, "beir")  # the QA -> BEIR converter's reading: one qrel per row
    assert beir.qrels["0"] == {"0": 1, "7": 1} and beir.corpus_ids == [str(i) for i in range(8)]


# ----------------------------------------------------------------------------- M-BEIR
def test_uniir_format_string():
    assert format_string('  "a red car\r"  ') == "A red car."
    assert format_string("is it?") == "Is it?"
    assert format_string(None) == "" and format_string("") == ""


def test_mbeir_query_text_instruction_and_qrels(mbeir_dir):
    table = read_instructions(mbeir_dir / "instructions" / "query_instructions.tsv")
    assert table[("9", "text", "image")] == ["retrieve a image match for this text", "find the matching image"]
    row = json.loads((mbeir_dir / "query" / "test" / "mbeir_mscoco_task0_test.jsonl").read_text().splitlines()[0])
    item = query_item(row, mbeir_dir, {row["pos_cand_list"][0]: "image"}, InstructionPicker(table), "q")
    assert item.text == format_string(f"Retrieve a image match for this text. {row['query_txt']}")
    assert item.image is None
    plain = query_item(row, mbeir_dir, {}, InstructionPicker(table, mode="none"), "q")
    assert plain.text == format_string(row["query_txt"])
    picks = {InstructionPicker(table, mode="random", seed=s)("9", "text", "image") for s in range(20)}
    assert picks == {"Retrieve a image match for this text.", "Find the matching image."}
    qrels, task_of = read_qrels(mbeir_dir / "qrels" / "test" / "mbeir_mscoco_task0_test_qrels.txt")
    assert qrels[row["qid"]] == {row["pos_cand_list"][0]: 1} and task_of[row["qid"]] == "0"


def test_mbeir_qrels_keep_only_positive_relevance_and_cand_lists_accept_objects(tmp_path):
    from vlmbed.data.mbeir import cand_ids

    (tmp_path / "q.txt").write_text("9:1 0 9:2 1 3\n9:1 0 9:3 0 3\n9:2 0 9:4 2 3\n")
    qrels, _ = read_qrels(tmp_path / "q.txt")
    assert qrels == {"9:1": {"9:2": 1}, "9:2": {"9:4": 2}}
    assert cand_ids(["9:1", {"did": "9:2"}]) == ["9:1", "9:2"]
