"""The Snakemake workflow as a user drives it: dry-run plans, lint, formatting and a real run."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from conflux.data.pairs import read_pairs
from processes import processes_naming
from report_browser import (
    EYE,
    RESULTS_JS,
    click,
    headless_chromium,
    open_subcategory,
    shown_result,
)
from workflow_cli import BIN, RUN_TIMEOUT, planned_jobs, snakemake


def test_default_dry_run_plans_every_dataset_and_the_tiny_model(project_root, tmp_path):
    proc = snakemake(
        project_root, "-n", "--configfile", str(project_root / "config/config.yaml"), workdir=tmp_path
    )
    jobs = planned_jobs(proc.stdout + proc.stderr)
    assert jobs["load_pairs"] == 2 and jobs["split_pairs"] == 2
    assert jobs["load_persona"] == 3  # the general set and the two persona sets
    # persona DPO pairs per (model, dataset); the bundled general file holds the persona sets' rejected
    # replies, the base model generates the general set's (its own greedy replies)
    assert jobs["persona_pairs"] == 3 and jobs["generate_general"] == 1
    assert jobs["build_tiny_model"] == 1 and jobs["base_model_manifest"] == 1
    # Reference log-probs once per (model, split part): 1 model x 2 datasets x 3 parts (agree, conflict,
    # eval_conflict),
    # shared by the three curriculum stages, Panacea, every DPO-Soup member and every evaluation.
    assert jobs["reference_logps"] == 2 * 3
    # batch_seeds (the default's): one job per (rule, model, dataset) trains all three seeds, one after
    # another, and one evaluation job per dataset scores each seed's 5 stages and methods, each seed and
    # method to its own records file: datasets x (3 curriculum stages, Panacea, DPO-Soup); the variants are
    # not in the default
    assert jobs["evaluate_method"] == 2
    assert jobs["panacea"] == 2 and "panacea_lora" not in jobs and "curriculum_rdpo_stage1" not in jobs
    # the weight analysis and the exports cover analysis.seeds: [0] only, the evaluation every seed
    assert jobs["export_policy"] == 3  # the three compared methods, on synth_pku (config: export)
    assert jobs["table1"] == jobs["table2"] == jobs["figure2"] == 1  # synth_pku k=2; synth_hs2 k=5
    assert jobs["ablation"] == 2  # the curriculum's stages, per dataset
    assert jobs["figure3"] == 1  # helpfulness against each dimension, synth_hs2
    assert jobs["length_bias"] == 2  # Appendix C, per pair dataset
    # persona variants per dataset: sft, dpo, sft_dpo every seed; the TIES merges at lambda 0.5 and 1 (weight
    # analysis) of seed 0 (analysis.seeds)
    # one job per dataset for the trained variants of every seed, per (dataset, analysed seed) for the merges
    assert jobs["persona_eval_base"] == 3 and jobs["persona_eval"] == 3
    assert jobs["persona_eval_merges"] == 3
    assert jobs["persona_table"] == 3
    # one merge job per (dataset, analysed seed): SFT and DPO are merged once and scaled to each λ of the grid
    assert jobs["merge_sft_dpo"] == 3
    assert jobs["taskvec_stats_persona"] == jobs["conflict_methods"] == jobs["conflict_summary_methods"] == 3
    # CL-L2 between the three datasets: per (model, analysed seed, method), and its table per (model, method)
    assert jobs["conflict_datasets"] == jobs["conflict_summary_datasets"] == 3
    assert jobs["taskvec_stats_adapters"] == jobs["conflict_dims"] == 2 * 2  # stage 3 and DPO-Soup
    assert jobs["weight_figures_persona"] == 3 and jobs["weight_figures_adapters"] == 2 * 2
    # task-vector dumps are off in the default (analysis.dumps.mode: none); the small run turns them on
    assert "dump_task_vectors_persona" not in jobs and "dump_task_vectors_adapters" not in jobs
    assert jobs["revert_sweep"] == jobs["key_layers"] == 3  # analysis.revert.methods: [dpo]
    for rule in ("curriculum_stage1", "curriculum_stage2", "curriculum_stage3", "panacea"):
        assert jobs[rule] == 2
    assert jobs["dpo_soup"] == 2 + 5  # one job per dimension: k=2 and k=5
    assert jobs["sft"] == jobs["dpo"] == jobs["sft_dpo"] == 3
    # DPO's reference: the base model's, once per (model, dataset); SFT→DPO's: its SFT model's, per seed (in
    # one job per dataset, like the training)
    assert jobs["reference_logps_dpo"] == 3 and jobs["reference_logps_sft_dpo"] == 3


def test_paper_dry_run_plans_the_full_matrix(project_root):
    """Run from the repository root, as the README says: the paper config replaces the embedded default
    instead of being merged over it (no tiny settings, no synthetic datasets or default exports leak in)."""
    proc = snakemake(project_root, "-n", "--configfile", "config/paper.yaml")
    assert "is extended by" not in proc.stdout + proc.stderr
    jobs = planned_jobs(proc.stdout + proc.stderr)
    assert jobs["split_pairs"] == 2 and jobs["load_persona"] == 3
    assert jobs["persona_pairs"] == 3 * 2  # datasets x persona models
    assert jobs["generate_general"] == 2  # the general set's rejected replies, per persona model
    assert jobs["base_model_manifest"] == 4 and "build_tiny_model" not in jobs
    runs = 2 * 2 * 3  # datasets x models x seeds
    persona_runs = 3 * 2 * 3  # general, ojousama, student x models x seeds
    assert jobs["reference_logps"] == 2 * 2 * 3  # models x datasets x parts, not per seed
    assert jobs["curriculum_stage1"] == jobs["curriculum_stage3"] == jobs["panacea"] == runs
    assert jobs["dpo_soup"] == (2 + 5) * 2 * 3
    assert jobs["sft"] == jobs["dpo"] == jobs["sft_dpo"] == jobs["merge_sft_dpo"] == persona_runs
    # sft, dpo and sft_dpo in one job, the merges at four λ in another, per (dataset, model, seed)
    assert jobs["persona_eval"] == jobs["persona_eval_merges"] == persona_runs
    # sft, dpo and the SFT+DPO merge at λ 1; key layers per (model, dataset), not per seed
    assert jobs["revert_sweep"] == 3 * persona_runs and jobs["key_layers"] == 3 * 2 * 3
    assert jobs["weight_figures_persona"] == persona_runs and jobs["weight_figures_adapters"] == 2 * runs
    assert (
        jobs["dump_task_vectors_persona"] == 3 * persona_runs
        and jobs["dump_task_vectors_adapters"] == 2 * runs
    )
    assert jobs["conflict_datasets"] == 2 * 3 * 3  # models x seeds x methods
    assert jobs["conflict_summary_datasets"] == 2 * 3  # models x methods


def test_lint_is_clean(project_root):
    proc = snakemake(project_root, "--lint", check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Lints for" not in proc.stdout + proc.stderr


def test_snakefmt_and_ruff_are_clean(project_root):
    fmt = subprocess.run(
        [str(BIN / "snakefmt"), "--check", "Snakefile", "rules"],
        cwd=project_root,
        capture_output=True,
        text=True,
    )
    assert fmt.returncode == 0, fmt.stderr
    for args in (["check", "."], ["format", "--check", "."]):
        ruff = subprocess.run([str(BIN / "ruff"), *args], cwd=project_root, capture_output=True, text=True)
        assert ruff.returncode == 0, ruff.stdout + ruff.stderr


def test_bad_config_value_stops_the_workflow_naming_the_key(project_root, tmp_path):
    raw = yaml.safe_load((project_root / "config/config.yaml").read_text())
    raw["datasets"]["synth_pku"]["conflict_rate"] = 1.5
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    proc = snakemake(project_root, "-n", "--configfile", str(cfg), workdir=tmp_path, check=False)
    assert proc.returncode != 0
    assert "datasets.synth_pku.conflict_rate" in proc.stderr + proc.stdout
    assert "maximum" in proc.stderr + proc.stdout


@pytest.mark.parametrize("extra", ["--qos=normal; touch {marker} #", ["--qos=normal; touch {marker} #"]])
def test_a_shell_injection_in_slurm_extra_is_refused_before_any_sbatch(project_root, tmp_path, extra):
    """The SLURM plugin runs sbatch through a shell; the config check stops the plan, naming the key."""
    marker = tmp_path / "injected"
    raw = yaml.safe_load((project_root / "config/paper.yaml").read_text())
    value = (
        extra.format(marker=marker) if isinstance(extra, str) else [e.format(marker=marker) for e in extra]
    )
    raw["resources"]["rules"]["sft"]["slurm_extra"] = value
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    proc = snakemake(
        project_root,
        "-n",
        "--profile",
        "profiles/slurm",
        "--configfile",
        str(cfg),
        workdir=tmp_path,
        check=False,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "resources.rules.sft.slurm_extra" in out, out[-2000:]
    assert "sbatch" not in out and "rule sft" not in out and not marker.exists()


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """Run the whole default workflow, shrunk, in a scratch directory."""
    root = Path(__file__).resolve().parents[1]
    work = tmp_path_factory.mktemp("run")
    raw = yaml.safe_load((root / "config/config.yaml").read_text())
    raw["seeds"] = [0]  # the plumbing of one seed; the tables over several: tests/test_eval_tables.py
    raw["datasets"]["synth_pku"]["n_pairs"] = 400
    raw["datasets"]["synth_hs2"]["n_prompts"] = 200
    raw["models"]["tiny"]["tiny"]["vocab_size"] = 600
    raw["models"]["tiny"]["tiny"]["pretrain"]["steps"] = 20  # the rule pretrains; how well: test_tinymodel.py
    # the variants and the dumps the default leaves out for time, so their plumbing is still run
    raw["studies"]["curriculum"]["methods"] += ["curriculum_rdpo", "panacea_lora"]
    raw["analysis"]["dumps"]["mode"] = "full"
    raw["training"]["max_steps"] = 2  # the plumbing, not the learning: tests/test_training.py checks that
    raw["methods"]["sft"]["max_steps"] = raw["methods"]["dpo"]["max_steps"] = 2
    cfg = work / "config.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    snakemake(root, "--cores", "2", "--configfile", str(cfg), workdir=work, timeout=RUN_TIMEOUT)
    return work


def test_run_writes_splits_stats_and_a_loadable_tiny_model(small_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    for dataset in ("synth_pku", "synth_hs2"):
        split = small_run / "results/data" / dataset / "split"
        stats = json.loads((split / "stats.json").read_text())
        assert stats["counts"]["conflict"] > 0 and stats["counts"]["agree_sub"] == stats["counts"]["conflict"]
        assert len(read_pairs(split / "conflict.parquet")) == stats["counts"]["conflict"]
        assert (small_run / "logs/split_pairs" / f"{dataset}.log").exists()
    assert json.loads((small_run / "results/data/synth_hs2/split/stats.json").read_text())["k"] == 5
    persona = small_run / "results/data/persona_ojousama/persona"
    stats = json.loads((persona / "stats.json").read_text())
    assert stats["files"]["general"]["matched"] == stats["prompts"]  # the bundled sets share their prompts
    assert json.loads((persona / "tiny/pairs_stats.json").read_text())["pairs"]["train"] > 100
    run = small_run / "results/train/tiny/synth_hs2/seed0"
    for out in ["curriculum/stage1", "curriculum/stage2", "curriculum/stage3", "panacea", "dpo_soup/dim4"]:
        assert json.loads((run / out / "summary.json").read_text())["global_steps"] == 2
    assert (run / "curriculum/stage3/adapters/dim4/adapter_model.safetensors").exists()
    assert not (small_run / "results/checkpoints").exists() or not any(
        (small_run / "results/checkpoints").rglob("checkpoint-*")
    )
    sft = small_run / "results/train/tiny/persona_student/seed0/sft/model"
    assert (sft / "model.safetensors").exists()
    manifest = json.loads((small_run / "results/models/tiny/manifest.json").read_text())
    # the pretraining record travels into the manifest: 20 steps already leave the uniform ~vocab perplexity
    pretrain = manifest["pretrain"]
    assert (
        pretrain["steps"] == 20
        and pretrain["held_out_reply_perplexity"] < pretrain["initial_held_out_reply_perplexity"] / 4
    )
    # An embedded model's load_path is relative to the workflow directory, so results/ can move as a whole.
    assert not Path(manifest["load_path"]).is_absolute()
    model = AutoModelForCausalLM.from_pretrained(small_run / manifest["load_path"])
    tokenizer = AutoTokenizer.from_pretrained(small_run / manifest["load_path"])
    assert model.config.vocab_size == len(tokenizer)


def test_second_run_has_nothing_to_do(small_run):
    root = Path(__file__).resolve().parents[1]
    proc = snakemake(root, "-n", "--configfile", str(small_run / "config.yaml"), workdir=small_run)
    assert "Nothing to be done" in proc.stdout + proc.stderr


def test_bad_dataset_file_fails_its_job_and_leaves_no_output(project_root, tmp_path):
    bad = tmp_path / "mine.jsonl"
    good = json.dumps(
        {
            "pair_id": "a",
            "prompt": "p",
            "response_a": "x",
            "response_b": "y",
            "scores_a": [1, 0],
            "scores_b": [0, 1],
        }
    )
    bad.write_text(good + "\n" + good.replace('"a"', '"b"', 1).replace("[1, 0]", "[1, 0, 3]") + "\n")
    raw = {
        "models": {"tiny": {"source": "embedded"}},
        "datasets": {"mine": {"kind": "canonical", "path": str(bad), "dims": ["helpful", "harmless"]}},
        "studies": {"curriculum": {"datasets": ["mine"], "models": ["tiny"]}},
    }
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    proc = snakemake(
        project_root,
        "--cores",
        "1",
        "results/data/mine/pairs.parquet",  # before --configfile, which takes every path that follows it
        "--configfile",
        str(cfg),
        workdir=tmp_path,
        check=False,
    )
    log = (tmp_path / "logs/load_pairs/mine.log").read_text()
    assert proc.returncode != 0
    assert "mine.jsonl: row 2, field 'scores_a'" in log
    assert not (tmp_path / "results/data/mine").exists() or not any(
        (tmp_path / "results/data/mine").iterdir()
    )


def test_run_ends_with_the_papers_tables_figure_and_persona_tables(small_run):
    tables = small_run / "results/tables/tiny"
    table1 = (tables / "synth_pku/table1.md").read_text()
    for method in ("curriculum_stage3", "panacea", "dpo_soup"):  # the paper's three methods
        assert method in table1
    assert "curriculum_stage1" not in table1 and "curriculum_stage2" not in table1
    for dataset in ("synth_pku", "synth_hs2"):  # the stages side by side
        ablation = (tables / dataset / "ablation.md").read_text()
        assert all(f"curriculum_stage{i}" in ablation for i in (1, 2, 3)) and "dpo_soup" not in ablation
        # each variant beside the method it varies
        assert all(v in ablation for v in ("curriculum_rdpo_stage3", "| panacea |", "panacea_lora"))
    assert "n (held-out conflict pairs per dimension)" in table1 and "Seeds: 0" in table1
    summary = (tables / "synth_hs2/table2_summary.csv").read_text()
    assert "win_rate" in summary and "dpo_soup" in summary
    settings = (tables / "synth_hs2/table2_settings.csv").read_text().splitlines()
    assert len(settings) - 1 == 50 * 3 * 2  # 10 dimension pairs x 5 weights, x 3 methods, x (seed 0 + mean)
    assert (tables / "synth_hs2/figure2.png").stat().st_size > 1000
    assert (tables / "synth_hs2/figure2.svg").read_text().lstrip().startswith("<?xml")
    assert (tables / "synth_hs2/figure3.png").stat().st_size > 1000
    bias = (tables / "synth_hs2/length_bias.csv").read_text()
    assert "spearman" in bias and "verbosity" in bias and (tables / "synth_pku/length_bias.png").exists()
    persona = (tables / "persona_ojousama/persona.md").read_text()
    assert all(variant in persona for variant in ("base", "sft", "dpo"))


def test_run_leaves_no_pickles_and_models_that_generate_with_a_cache(small_run):
    """Outputs load without unpickling anything: no .bin/.pt/.pkl outside the checkpoints (the Trainer's
    arguments are training_args.json), and saved full models say use_cache: true."""
    results = small_run / "results"
    pickles = [p for ext in ("*.bin", "*.pt", "*.pkl") for p in results.rglob(ext)
               if "checkpoints" not in p.relative_to(results).parts]  # fmt: skip
    assert pickles == []
    sft = results / "train/tiny/persona_ojousama/seed0/sft"
    assert json.loads((sft / "model/config.json").read_text())["use_cache"] is True
    assert json.loads((sft / "training_args.json").read_text())["seed"] == 0


def test_run_exports_pi_w_of_the_three_methods_for_serving(small_run):
    """config export: the three compared methods at both w of synth_pku, each an adapter PEFT loads and a
    merged model transformers loads (their logits against policy.at(w): tests/test_export.py)."""
    from peft import PeftConfig

    root = small_run / "results/export/tiny/synth_pku/seed0"
    assert sorted(p.name for p in root.iterdir()) == ["curriculum_stage3", "dpo_soup", "panacea"]
    for variant in root.iterdir():
        record = json.loads((variant / "export.json").read_text())
        assert [r["w"] for r in record["weights"]] == [[0.5, 0.5], [0.8, 0.2]]
        for entry in record["weights"]:
            out = variant / entry["dir"]
            assert PeftConfig.from_pretrained(str(out / "adapter")).r == entry["adapter_rank"]
            assert (out / "merged/model.safetensors").is_file()
            assert (out / "merged/tokenizer_config.json").is_file()


@pytest.fixture(scope="module")
def report_html(small_run, tmp_path_factory):
    root = Path(__file__).resolve().parents[1]
    html = tmp_path_factory.mktemp("report") / "report.html"
    snakemake(root, "--report", str(html), "--configfile", str(small_run / "config.yaml"), workdir=small_run)
    return html


def test_report_html_holds_the_tables_and_the_figure(report_html):
    text = report_html.read_text(errors="replace")
    for needle in (
        "Table 1",
        "Table 2: win rate and mean accuracy",
        "Ablation: the curriculum after each stage",
        "Figure 3: helpfulness against each dimension",
        "Length bias of the implicit reward",
        "Figure 2",
        "Persona study",
        "figure2.png",
        "Weight analysis",
        "key_layers_dpo.html",
        "Training curves by method",
    ):
        assert needle in text, needle


@pytest.mark.slow
def test_report_opens_in_a_browser_and_shows_every_table_and_figure(small_run, report_html, tmp_path):
    """A reader opens report.html in Chromium, clicks every category, subcategory and result: each figure
    draws at its PNG's width, each table page shows the Markdown table's title and rows, and the page logs
    no error. Every PNG and HTML table the run drew is in the report."""
    from selenium.webdriver.common.by import By

    tables = small_run / "results/tables"
    drawn = {str(p.relative_to(small_run)) for ext in ("png", "html") for p in tables.rglob(f"*.{ext}")}
    profile, uri = tmp_path / "chromium-profile", report_html.as_uri()
    viewed: set[str] = set()
    with headless_chromium(profile) as browser:
        browser.get(uri)
        results, categories = browser.execute_script(RESULTS_JS), browser.execute_script("return categories")
        assert {p for p, r in results.items() if r["mime"] in ("image/png", "text/html")} == drawn
        assert {"Curriculum study", "Persona study", "Training", "Weight analysis"} == set(categories)
        by_uri = {r["uri"]: p for p, r in results.items()}
        for category, subcategories in categories.items():
            for subcategory, paths in subcategories.items():
                buttons = open_subcategory(browser, uri, category, subcategory, len(paths))
                assert len(buttons) == len(paths), (category, subcategory)
                src = None
                for i, button in enumerate(buttons, start=1):
                    href = button.get_attribute("href")
                    if href.startswith("data:"):  # a CSV: offered as a download of the file itself
                        assert button.get_attribute("download") == Path(by_uri[href]).name
                        viewed.add(by_uri[href])
                        continue
                    click(browser, f"({EYE})[{i}]")
                    tag, src, width = shown_result(browser, src)
                    path = by_uri[src]
                    viewed.add(path)
                    if tag == "IMG":  # drawn at the PNG's own width (IHDR bytes 16-20)
                        assert width == int.from_bytes((small_run / path).read_bytes()[16:20], "big"), path
                        continue
                    md = (small_run / path).with_suffix(".md").read_text(encoding="utf-8").splitlines()
                    browser.switch_to.frame(browser.find_element(By.CSS_SELECTOR, "#app iframe"))
                    assert browser.find_element(By.TAG_NAME, "h1").text == md[0].removeprefix("# "), path
                    rows = browser.find_elements(By.CSS_SELECTOR, "table tr")
                    assert len(rows) == sum(line.startswith("| ") for line in md), path
                    browser.switch_to.default_content()
        errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert viewed == set(results) and not errors, errors
    assert not processes_naming(profile)  # the browser and its helpers are gone


def test_changing_one_method_reruns_only_that_method_and_its_table(small_run, tmp_path):
    """Naming a table after a config change to Panacea plans Panacea's training, its seed's evaluation (one
    job scores every method of a seed) and the table, and no other training (Snakemake's params trigger;
    training settings are params)."""
    root = Path(__file__).resolve().parents[1]
    raw = yaml.safe_load((small_run / "config.yaml").read_text())
    raw["methods"]["panacea"] = {"learning_rate": 0.001}
    cfg = tmp_path / "changed.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    target = "results/tables/tiny/synth_pku/table1.md"
    proc = snakemake(root, "-n", target, "--configfile", str(cfg), workdir=small_run)
    jobs = planned_jobs(proc.stdout + proc.stderr)
    assert jobs == {"panacea": 1, "evaluate_method": 1, "table1": 1, "total": 3}


def test_forcerun_of_one_stage_reruns_only_what_depends_on_it(small_run):
    root = Path(__file__).resolve().parents[1]
    target = "results/tables/tiny/synth_pku/table1.md"
    proc = snakemake(
        root, "-n", target, "--forcerun", "curriculum_stage2", "--configfile", str(small_run / "config.yaml"),
        workdir=small_run,
    )  # fmt: skip
    jobs = planned_jobs(proc.stdout + proc.stderr)
    # stage 2 and 3 retrain; the curriculum after stage 3 (the one Table 1 shows) is evaluated again.
    assert jobs == {
        "curriculum_stage2": 1,
        "curriculum_stage3": 1,
        "evaluate_method": 1,
        "table1": 1,
        "total": 4,
    }


def test_naming_a_table_plans_only_its_ancestors(project_root, tmp_path):
    target = "results/tables/tiny/synth_pku/table1.md"
    proc = snakemake(project_root, "-n", target, "--configfile", str(project_root / "config/config.yaml"),
                     workdir=tmp_path)  # fmt: skip
    out = proc.stdout + proc.stderr
    jobs = planned_jobs(out)
    assert "synth_hs2" not in out and "persona" not in out
    # the default's batch_seeds: one job per dimension trains the three seeds, one job evaluates them
    assert jobs["load_pairs"] == 1 and jobs["dpo_soup"] == 2 and jobs["evaluate_method"] == 1
    assert "sft" not in jobs and "table2" not in jobs and "all" not in jobs


def test_run_writes_task_vector_stats_conflict_tables_and_merges(small_run):
    import pandas as pd

    persona = small_run / "results/analysis/tiny/persona_ojousama/seed0"
    stats = pd.read_parquet(persona / "taskvec_stats.parquet")
    assert set(stats["model"]) == {"sft", "dpo", "sft_dpo"} and (stats["l2"] > 0).any()
    conflict = pd.read_parquet(persona / "conflict_methods.parquet")
    pairs = {("sft", "dpo"), ("sft", "sft_dpo"), ("dpo", "sft_dpo")}
    assert set(zip(conflict["a"], conflict["b"], strict=True)) == pairs
    assert ((conflict["share_a"] >= 0) & (conflict["share_a"] <= 1)).all()
    dims = pd.read_parquet(small_run / "results/analysis/tiny/synth_hs2/seed0/conflict_dims_dpo_soup.parquet")
    assert len({(a, b) for a, b in zip(dims["a"], dims["b"], strict=True)}) == 10  # every dim pair of k=5
    merged = small_run / "results/merges/tiny/persona_ojousama/seed0/ties_lam0.5"
    assert (merged / "config.json").exists()
    assert "ties_lam0.5" in (small_run / "results/tables/tiny/persona_ojousama/persona.md").read_text()


def test_run_writes_the_key_layers_table_and_the_weight_figures(small_run):
    """The default config reverts every layer, module type and cell of the DPO model of each persona."""
    import pandas as pd

    tables = small_run / "results/tables/tiny/persona_ojousama"
    key = pd.read_csv(tables / "key_layers_dpo.csv")
    mean = key[key["seed"] == "mean"]
    assert list(mean["kind"].drop_duplicates()) == ["layer", "module", "cell"]
    assert sorted(mean[mean["kind"] == "layer"]["target"]) == ["layer0", "layer1"]  # the tiny model's layers
    assert mean.groupby("kind")["rank"].min().eq(1).all()
    assert (mean["tau_l2"] > 0).all() and mean["effect_removed"].notna().all()
    assert "## layer reverts" in (tables / "key_layers_dpo.md").read_text()
    sweep = json.loads(
        (small_run / "results/analysis/tiny/persona_ojousama/seed0/revert_dpo.json").read_text()
    )
    dpo = json.loads((small_run / "results/eval/tiny/persona_ojousama/seed0/persona_dpo.json").read_text())
    # the sweep's unreverted model is the evaluated DPO model: same metrics
    assert sweep["finetuned"]["persona_margin"] == pytest.approx(dpo["metrics"]["persona_margin"])
    for name in ("weight_heatmaps", "layer_norms"):
        assert (tables / f"seed0/{name}.png").stat().st_size > 1000
        assert (small_run / f"results/tables/tiny/synth_hs2/seed0/{name}_dpo_soup.png").stat().st_size > 1000


def test_run_dumps_the_task_vectors_that_duckdb_reads_back_as_the_stats(small_run):
    """The small run (analysis.dumps.mode: full) dumps every entry of τ; DuckDB's per-parameter L2 of a dump
    is the stats table's."""
    import duckdb
    import pandas as pd

    persona = small_run / "results/dumps/tiny/persona_ojousama/seed0"
    assert sorted(p.name for p in persona.iterdir()) == ["dpo", "sft", "sft_dpo"]
    adapters = small_run / "results/dumps/tiny/synth_hs2/seed0"
    assert sorted(p.name for p in adapters.iterdir()) == ["curriculum_stage3", "dpo_soup"]
    assert json.loads((adapters / "dpo_soup/_dump.json").read_text())["sources"] == [
        f"dim{i}" for i in range(5)
    ]
    files = ", ".join(f"'{persona}/{m}/**/*.parquet'" for m in ("sft", "dpo", "sft_dpo"))
    l2 = duckdb.sql(
        f"SELECT source, param, sqrt(sum(value::DOUBLE ^ 2)) AS l2 "
        f"FROM read_parquet([{files}], hive_partitioning=true) GROUP BY ALL"
    ).df()
    stats = pd.read_parquet(small_run / "results/analysis/tiny/persona_ojousama/seed0/taskvec_stats.parquet")
    merged = l2.merge(
        stats, left_on=["source", "param"], right_on=["model", "param"], suffixes=("", "_stats")
    )
    assert len(merged) == len(stats) == len(l2)
    assert ((merged["l2"] - merged["l2_stats"]).abs() <= 1e-6 * merged["l2_stats"] + 1e-12).all()


def test_long_loops_report_progress_in_their_job_logs(small_run):
    """Snakemake jobs run without a terminal (as on SLURM): their loops log how far they are."""
    logs = small_run / "logs"
    checks = {
        "revert_sweep/tiny/persona_ojousama/seed0/dpo.log": "revert sweep of dpo:",
        "evaluate_method/tiny/synth_pku/seed0.log": "evaluate panacea seed 0:",
        "reference_logps/tiny/synth_pku/agree.log": "reference log-probs:",
        "persona_eval/tiny/persona_ojousama/seed0.log": "generate",
        "merge_sft_dpo/tiny/persona_ojousama/seed0.log": "ties merge:",
        "taskvec_stats_persona/tiny/persona_ojousama/seed0.log": "stats sft:",
        "dump_task_vectors_adapters/tiny/synth_hs2/seed0/dpo_soup.log": "task-vector dump:",
    }
    for log, words in checks.items():
        text = (logs / log).read_text(encoding="utf-8")
        assert words in text and " done in " in text, (log, text[-500:])


def test_runs_keep_tensorboard_events_and_changing_tracking_reruns_nothing(small_run):
    root = Path(__file__).resolve().parents[1]
    for run in ("synth_pku/seed0/panacea", "synth_hs2/seed0/dpo_soup/dim4", "persona_ojousama/seed0/sft"):
        events = (small_run / "results/train/tiny" / run / "tensorboard").glob("events.out.tfevents.*")
        assert list(events), run
    for value in ("tracking={backend: none}", "resume=restart"):
        proc = snakemake(
            root, "-n", "--config", value, "--configfile", str(small_run / "config.yaml"), workdir=small_run
        )
        assert "Nothing to be done" in proc.stdout + proc.stderr, value


def test_run_draws_the_training_curves_of_every_dataset(small_run):
    tables = small_run / "results/tables/tiny"
    for dataset in ("synth_pku", "synth_hs2", "persona_ojousama", "persona_student"):
        for name in ("training_curves", "training_curves_methods"):
            assert (tables / dataset / f"{name}.png").stat().st_size > 1000, (dataset, name)
            assert (tables / dataset / f"{name}.svg").read_text().lstrip().startswith("<?xml")
