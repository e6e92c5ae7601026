"""Write docs/results.md from benchmarks/results/: every current result table with the command that wrote it and the
machine it ran on, grouped by family. A rerun of a benchmark updates its files; rerunning this updates the page.

    python benchmarks/make_results_page.py            # writes docs/results.md
    python benchmarks/make_results_page.py --check    # exit 1 if docs/results.md is not what the files give

Which results are current is listed in ``CURRENT`` below (stale and variant runs live in benchmarks/results/archive/,
indexed in benchmarks/results/README.md).
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
PAGE = ROOT / "docs" / "results.md"

# (section, docs page with the discussion, result stems relative to benchmarks/results)
CURRENT: list[tuple[str, str, list[str]]] = [
    ("Hard methods", "hard.md", ["hard_speed", "hard_speed_llmlingua2", "hard_profile", "reuse_prefix_check",
                                 "ranking_padding",
                                 "llmlingua_parity_full", "llmlingua_parity_full_longllmlingua",
                                 "llmlingua_parity_window", "llmlingua_parity_ranking", "llmlingua_long",
                                 "llmlingua2_vs_teacher",
                                 "llmlingua2_vs_longllmlingua",
                                 "multidoc20_scorers/multidoc_quality_reader"]),
    ("QA quality and the equal-budget benchmark", "evaluation.md",
     ["multidoc200_llmlingua/multidoc_quality", "multidoc200_llmlingua2/multidoc_quality", "multidoc_quality",
      "multidoc20_longllmlingua_loose/multidoc_quality", "multidoc20_longllmlingua_strict/multidoc_quality",
      "multidoc_trim_validation_document_rank/multidoc_quality", "multidoc_trim_validation_share/multidoc_quality",
      "multidoc20_longllmlingua_document_rank/multidoc_quality",
      "multidoc_reader_llmlingua2", "equal_budget"]),
    ("Soft methods", "soft.md", ["soft_train_speed", "soft_train_speed_floor", "soft_train_speed_compiled_bf16_lora",
                                 "soft_train_speed_amd", "soft_train_speed_int8",
                                 "soft_train_speed_shared_graphs", "soft_train_speed_cold_shared",
                                 "soft_train_speed_cold_per_layer", "soft_train_speed_sdpa", "soft_train_speed_mfu",
                                 "soft_train_speed_chunked_loss", "soft_train_speed_int8_sdpa",
                                 "soft_train_speed_fp32_attention",
                                 "soft_grad_precision", "soft_grad_precision_chunked_loss",
                                 "soft_grad_precision_fp32_attention",
                                 "soft_design/table",
                                 "soft_design/meanpool",
                                 "soft_design/meanpool_continued", "soft_design/meanpool_cosine",
                                 "soft_design/meanpool_anneal2", "soft_design/meanpool_declora",
                                 "soft_design/meanpool_r8", "soft_design/meanpool_uncut",
                                 "soft_design/meanpool_2x", "soft_design/curriculum_baseline_4x",
                                 "soft_design/curriculum_1x", "soft_design/curriculum_2x", "soft_design/curriculum_4x",
                                 "soft_design/compile_ab_compiled", "soft_design/compile_ab_eager",
                                 "soft_design/int8_ab_int8", "soft_design/int8_ab_native",
                                 "soft_design/int8_ab_shared_int8", "soft_design/int8_ab_shared_native",
                                 "soft_design/loss_ab_chunked", "soft_design/loss_ab_sliced",
                                 "soft_design/int8_ab_fp32_attention",
                                 "soft_validation_4x", "soft_validation_4x_declora", "soft_validation_4x_r8", "soft_validation_4x_uncut",
                                 "soft_test_4x", "soft_long_reconstruction_validation", "soft_long_reconstruction",
                                 "soft_long_reconstruction_spans_validation", "soft_squad_validation_spans_qa",
                                 "soft_answer_survival_validation", "soft_squad_validation_entity_qa",
                                 "soft_squad_validation_entity_cloze", "soft_squad_validation_focus", "soft_squad_test_focus",
                                 "soft_test_4x_declora", "soft_test_2x", "soft_test_4x_qa", "soft_squad_test_4x_qa",
                                 "soft_qa_recipe_reproduction", "soft_qa_recipe", "soft_4x_recipe",
                                 "soft_4x_int8_recipe", "soft_validation_4x_int8_recipe",
                                 "soft_qa_int8_recipe", "soft_squad_validation_qa_int8_recipe",
                                 "soft_validation_qa_int8_recipe", "soft_squad_test_qa_int8_recipe",
                                 "soft_test_qa_int8_recipe",
                                 "soft_validation_4x_recipe", "soft_test_4x_recipe",
                                 "soft_squad_validation",
                                 "soft_qa_templates", "soft_squad_validation_chat", "soft_squad_validation_chat_decoder",
                                 "soft_squad_test", "soft_eval_loss", "soft_slot_control", "soft_lm_prior",
                                 "icae_reconstruction_curve", "icae_reconstruction_curve_continued",
                                 "xrag_reconstruction", "xrag_squad"]),
    ("Vision", "vision.md", ["vision_small_vlm", "vision_small_vlm_stage2", "vision_small_vlm_stage3",
                             "vision_small_vlm_fair_validation", "vision_small_vlm_fair",
                             "vision_small_vlm_fair_variants_validation", "vision_llava_prefill",
                             "vision_qwen2vl_prefill"]),
    ("Interleaved image-text", "multimodal.md", ["interleaved", "interleaved_700_steps", "interleaved_probe",
                                                 "interleaved_frozen_decoder", "interleaved_frozen_vit",
                                                 "interleaved_trainable_vit", "interleaved_no_caption_stage",
                                                 "interleaved_meanpool", "interleaved_meanpool_select",
                                                 "interleaved_meanpool_r8", "interleaved_meanpool_r8_select",
                                                 "interleaved_meanpool_scratch_select"]),
    ("Serving", "integrations.md", ["serve_load"]),
]


def describe(machine) -> str:
    if isinstance(machine, dict):  # benchmarks/common.py machine_stamp()
        sys.path.insert(0, str(ROOT))
        from benchmarks.common import describe_machine

        return describe_machine(machine)
    return str(machine)


def stated(text: str, label: str) -> str | None:
    """What a result's Markdown says after ``Machine:`` / ``Command:`` (or its first line's machine note)."""
    m = re.search(rf"{label}:\s*(`[^`]+`|[^\n]+?)(?:\.\s|\n|$)", text, re.I)
    return m.group(1).strip() if m else None


def entry(stem: str) -> str:
    md, js = RESULTS / f"{stem}.md", RESULTS / f"{stem}.json"
    data = json.loads(js.read_text()) if js.is_file() else {}
    data = data if isinstance(data, dict) else {}
    text = md.read_text() if md.is_file() else ""
    lines = text.strip().splitlines()
    title = lines[0].lstrip("# ").strip() if lines else data.get("title", stem)
    body = "\n".join(lines[1:]).strip()
    body = re.sub(r"^(#+) ", lambda h: "#" * min(6, len(h.group(1)) + 3) + " ", body, flags=re.M)
    body = body.replace("](", "](../benchmarks/results/" + (str(Path(stem).parent) + "/" if "/" in stem else ""))
    machine = describe(data["machine"]) if data.get("machine") else stated(text, "machine")
    command = f"`{data['command']}`" if data.get("command") else stated(text, "command")
    files = " / ".join(f"[`{p.name}`](../benchmarks/results/{stem}{p.suffix})" for p in (md, js) if p.is_file())
    out = [f"### {title}", "", f"Files: {files}. Machine: {machine or 'not recorded in the file'}. "
           f"Command: {command or 'not recorded in the file'}."]
    if body:
        out += ["", body]
    elif data:
        out += ["", "(JSON only; its keys: " + ", ".join(f"`{k}`" for k in list(data)[:12]) + ")"]
    return "\n".join(out)


def render() -> str:
    parts = ["# Measured results", "",
             "Generated by `python benchmarks/make_results_page.py` from `benchmarks/results/` (do not edit by hand: "
             "rerun the benchmark, then this). Each table names the command that wrote it and the machine it ran on; "
             "the family pages discuss them. Stale and variant runs are in `benchmarks/results/archive/` "
             "(see `benchmarks/results/README.md`).", ""]
    parts += [f"- [{section}](#{re.sub(r'[^a-z0-9 -]', '', section.lower()).replace(' ', '-')})"
              for section, _, _ in CURRENT]
    for section, page, stems in CURRENT:
        parts += ["", f"## {section}", "", f"Discussed in [{page}]({page}).", ""]
        parts += ["\n\n".join(entry(s) for s in stems)]
    return "\n".join(parts).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare with docs/results.md instead of writing it")
    ap.add_argument("--out", type=Path, default=PAGE)
    args = ap.parse_args(argv)
    missing = [s for _, _, stems in CURRENT for s in stems
               if not (RESULTS / f"{s}.md").is_file() and not (RESULTS / f"{s}.json").is_file()]
    if missing:
        print(f"error: no results for {missing}", file=sys.stderr)
        return 2
    page = render()
    if args.check:
        current = args.out.read_text() if args.out.is_file() else ""
        if current != page:
            print(f"{args.out} is out of date: run python benchmarks/make_results_page.py", file=sys.stderr)
            return 1
        return 0
    args.out.write_text(page)
    print(f"wrote {args.out} ({len(page.splitlines())} lines)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
