rule reference_logps:
    input:
        pairs="results/data/{pair_dataset}/split/{ref_part}.parquet",
        manifest="results/models/{model}/manifest.json",
    output:
        "results/reference/{model}/{pair_dataset}/{ref_part}.parquet",
    log:
        "logs/reference_logps/{model}/{pair_dataset}/{ref_part}.log",
    benchmark:
        "benchmarks/reference_logps/{model}/{pair_dataset}/{ref_part}.tsv"
    conda:
        "../envs/conflux.yaml"
    threads: job_threads("reference_logps")
    resources:
        **job_resources("reference_logps"),
    params:
        tokenize=get_tokenize,
        batch_size=CFG.reference_batch_size,
    script:
        "../workflow/scripts/reference_logps.py"


rule curriculum_stage1:
    input:
        pairs=[split_part("agree")],
        references=[reference("agree")],
        manifest="results/models/{model}/manifest.json",
    output:
        per_seed_dirs(train_output("curriculum_stage1")),
    log:
        per_seed("logs/curriculum_stage1/{model}/{pair_dataset}/seed{seed}.log"),
    benchmark:
        per_seed_benchmark("benchmarks/curriculum_stage1/{model}/{pair_dataset}/seed{seed}.tsv")
    conda:
        "../envs/conflux.yaml"
    threads: job_threads("curriculum_stage1")
    resources:
        **job_resources("curriculum_stage1"),
    params:
        seeds=job_seeds,
        train=train_params("curriculum_stage1"),
        work_dir=checkpoint_dir,
        keep_checkpoints=CFG.keep_checkpoints,
    script:
        "../workflow/scripts/train_preference.py"


rule curriculum_stage2:
    input:
        pairs=[split_part("conflict")],
        references=[reference("conflict")],
        manifest="results/models/{model}/manifest.json",
        init=per_seed(train_output("curriculum_stage1")),
    output:
        per_seed_dirs(train_output("curriculum_stage2")),
    log:
        per_seed("logs/curriculum_stage2/{model}/{pair_dataset}/seed{seed}.log"),
    benchmark:
        per_seed_benchmark("benchmarks/curriculum_stage2/{model}/{pair_dataset}/seed{seed}.tsv")
    conda:
        "../envs/conflux.yaml"
    threads: job_threads("curriculum_stage2")
    resources:
        **job_resources("curriculum_stage2"),
    params:
        seeds=job_seeds,
        train=train_params("curriculum_stage2"),
        work_dir=checkpoint_dir,
        keep_checkpoints=CFG.keep_checkpoints,
    script:
        "../workflow/scripts/train_preference.py"


rule curriculum_stage3:
    input:
        pairs=[split_part("agree_sub"), split_part("conflict")],
        references=[reference("agree_sub"), reference("conflict")],
        manifest="results/models/{model}/manifest.json",
        init=per_seed(train_output("curriculum_stage2")),
    output:
        per_seed_dirs(train_output("curriculum_stage3")),
    log:
        per_seed("logs/curriculum_stage3/{model}/{pair_dataset}/seed{seed}.log"),
    benchmark:
        per_seed_benchmark("benchmarks/curriculum_stage3/{model}/{pair_dataset}/seed{seed}.tsv")
    conda:
        "../envs/conflux.yaml"
    threads: job_threads("curriculum_stage3")
    resources:
        **job_resources("curriculum_stage3"),
    params:
        seeds=job_seeds,
        train=train_params("curriculum_stage3"),
        work_dir=checkpoint_dir,
        keep_checkpoints=CFG.keep_checkpoints,
    script:
        "../workflow/scripts/train_preference.py"


# The length-controlled curriculum (registry: curriculum_rdpo): the same three stages with R-DPO's length term.
rule curriculum_rdpo_stage1:
    input:
        pairs=[split_part("agree")],
        references=[reference("agree")],
        manifest="results/models/{model}/manifest.json",
    output:
        per_seed_dirs(train_output("curriculum_rdpo_stage1")),
    log:
        per_seed("logs/curriculum_rdpo_stage1/{model}/{pair_dataset}/seed{seed}.log"),
    benchmark:
        per_seed_benchmark("benchmarks/curriculum_rdpo_stage1/{model}/{pair_dataset}/seed{seed}.tsv")
    conda:
        "../envs/conflux.yaml"
    threads: job_threads("curriculum_rdpo_stage1")
    resources:
        **job_resources("curriculum_rdpo_stage1"),
    params:
        seeds=job_seeds,
        train=train_params("curriculum_rdpo_stage1"),
        work_dir=checkpoint_dir,
        keep_checkpoints=CFG.keep_checkpoints,
    script:
        "../workflow/scripts/train_preference.py"


rule curriculum_rdpo_stage2:
    input:
        pairs=[split_part("conflict")],
        references=[reference("conflict")],
        manifest="results/models/{model}/manifest.json",
        init=per_seed(train_output("curriculum_rdpo_stage1")),
    output:
        per_seed_dirs(train_output("curriculum_rdpo_stage2")),
    log:
        per_seed("logs/curriculum_rdpo_stage2/{model}/{pair_dataset}/seed{seed}.log"),
    benchmark:
        per_seed_benchmark("benchmarks/curriculum_rdpo_stage2/{model}/{pair_dataset}/seed{seed}.tsv")
    conda:
        "../envs/conflux.yaml"
    threads: job_threads("curriculum_rdpo_stage2")
    resources:
        **job_resources("curriculum_rdpo_stage2"),
    params:
        seeds=job_seeds,
        train=train_params("curriculum_rdpo_stage2"),
        work_dir=checkpoint_dir,
        keep_checkpoints=CFG.keep_checkpoints,
    script:
        "../workflow/scripts/train_preference.py"


rule curriculum_rdpo_stage3:
    input:
        pairs=[split_part("agree_sub"), split_part("conflict")],
        references=[reference("agree_sub"), reference("conflict")],
        manifest="results/models/{model}/manifest.json",
        init=per_seed(train_output("curriculum_rdpo_stage2")),
    output:
        per_seed_dirs(train_output("curriculum_rdpo_stage3")),
    log:
        per_seed("logs/curriculum_rdpo_stage3/{model}/{pair_dataset}/seed{seed}.log"),
    benchmark:
        per_seed_benchmark("benchmarks/curriculum_rdpo_stage3/{model}/{pair_dataset}/seed{seed}.tsv")
    conda:
        "../envs/conflux.yaml"
    threads: job_threads("curriculum_rdpo_stage3")
    resources:
        **job_resources("curriculum_rdpo_stage3"),
    params:
        seeds=job_seeds,
        train=train_params("curriculum_rdpo_stage3"),
        work_dir=checkpoint_dir,
        keep_checkpoints=CFG.keep_checkpoints,
    script:
        "../workflow/scripts/train_preference.py"


rule panacea:
    input:
        pairs=[split_part("agree"), split_part("conflict")],
        references=[reference("agree"), reference("conflict")],
        manifest="results/models/{model}/manifest.json",
    output:
        per_seed_dirs(train_output("panacea")),
    log:
        per_seed("logs/panacea/{model}/{pair_dataset}/seed{seed}.log"),
    benchmark:
        per_seed_benchmark("benchmarks/panacea/{model}/{pair_dataset}/seed{seed}.tsv")
    conda:
        "../envs/conflux.yaml"
    threads: job_threads("panacea")
    resources:
        **job_resources("panacea"),
    params:
        seeds=job_seeds,
        train=train_params("panacea"),
        work_dir=checkpoint_dir,
        keep_checkpoints=CFG.keep_checkpoints,
    script:
        "../workflow/scripts/train_preference.py"


# Panacea over plain LoRA modules (registry: panacea_lora): the variant beside the paper's AdaLoRA Panacea.
rule panacea_lora:
    input:
        pairs=[split_part("agree"), split_part("conflict")],
        references=[reference("agree"), reference("conflict")],
        manifest="results/models/{model}/manifest.json",
    output:
        per_seed_dirs(train_output("panacea_lora")),
    log:
        per_seed("logs/panacea_lora/{model}/{pair_dataset}/seed{seed}.log"),
    benchmark:
        per_seed_benchmark("benchmarks/panacea_lora/{model}/{pair_dataset}/seed{seed}.tsv")
    conda:
        "../envs/conflux.yaml"
    threads: job_threads("panacea_lora")
    resources:
        **job_resources("panacea_lora"),
    params:
        seeds=job_seeds,
        train=train_params("panacea_lora"),
        work_dir=checkpoint_dir,
        keep_checkpoints=CFG.keep_checkpoints,
    script:
        "../workflow/scripts/train_preference.py"


rule dpo_soup:
    input:
        pairs=soup_pairs,
        references=[reference("agree"), reference("conflict")],
        manifest="results/models/{model}/manifest.json",
    output:
        per_seed_dirs(train_output("dpo_soup")),
    log:
        per_seed("logs/dpo_soup/{model}/{pair_dataset}/seed{seed}/dim{dim}.log"),
    benchmark:
        per_seed_benchmark("benchmarks/dpo_soup/{model}/{pair_dataset}/seed{seed}/dim{dim}.tsv")
    conda:
        "../envs/conflux.yaml"
    threads: job_threads("dpo_soup")
    resources:
        **job_resources("dpo_soup"),
    params:
        seeds=job_seeds,
        train=train_params("dpo_soup"),
        work_dir=checkpoint_dir,
        keep_checkpoints=CFG.keep_checkpoints,
    script:
        "../workflow/scripts/train_preference.py"


rule sft:
    input:
        data="results/data/{persona_dataset}/persona/sft_train.parquet",
        manifest="results/models/{model}/manifest.json",
    output:
        per_seed_dirs(train_output("sft", "persona_dataset")),
    log:
        per_seed("logs/sft/{model}/{persona_dataset}/seed{seed}.log"),
    benchmark:
        per_seed_benchmark("benchmarks/sft/{model}/{persona_dataset}/seed{seed}.tsv")
    conda:
        "../envs/conflux.yaml"
    threads: job_threads("sft")
    resources:
        **job_resources("sft"),
    params:
        seeds=job_seeds,
        train=train_params("sft"),
        work_dir=checkpoint_dir,
        keep_checkpoints=CFG.keep_checkpoints,
    script:
        "../workflow/scripts/train_trl.py"


rule reference_logps_dpo:
    input:
        data=pairs_part("train"),
        manifest="results/models/{model}/manifest.json",
    output:
        "results/reference/{model}/{persona_dataset}/dpo_train.parquet",
    log:
        "logs/reference_logps_dpo/{model}/{persona_dataset}.log",
    benchmark:
        "benchmarks/reference_logps_dpo/{model}/{persona_dataset}.tsv"
    conda:
        "../envs/conflux.yaml"
    threads: job_threads("reference_logps_dpo")
    resources:
        **job_resources("reference_logps_dpo"),
    params:
        train=train_params("dpo"),
        batch_size=CFG.reference_batch_size,
    script:
        "../workflow/scripts/reference_logps_dpo.py"


rule dpo:
    input:
        data=pairs_part("train"),
        manifest="results/models/{model}/manifest.json",
        reference="results/reference/{model}/{persona_dataset}/dpo_train.parquet",
    output:
        per_seed_dirs(train_output("dpo", "persona_dataset")),
    log:
        per_seed("logs/dpo/{model}/{persona_dataset}/seed{seed}.log"),
    benchmark:
        per_seed_benchmark("benchmarks/dpo/{model}/{persona_dataset}/seed{seed}.tsv")
    conda:
        "../envs/conflux.yaml"
    threads: job_threads("dpo")
    resources:
        **job_resources("dpo"),
    params:
        seeds=job_seeds,
        train=train_params("dpo"),
        work_dir=checkpoint_dir,
        keep_checkpoints=CFG.keep_checkpoints,
    script:
        "../workflow/scripts/train_trl.py"


# SFT→DPO (registry: sft_dpo): DPO from the SFT model of the same seed, whose log-probs are its reference.
rule reference_logps_sft_dpo:
    input:
        data=pairs_part("train"),
        manifest="results/models/{model}/manifest.json",
        init=per_seed(train_output("sft", "persona_dataset")),
    output:
        per_seed("results/reference/{model}/{persona_dataset}/seed{seed}/sft_dpo_train.parquet"),
    log:
        per_seed("logs/reference_logps_sft_dpo/{model}/{persona_dataset}/seed{seed}.log"),
    benchmark:
        per_seed_benchmark("benchmarks/reference_logps_sft_dpo/{model}/{persona_dataset}/seed{seed}.tsv")
    conda:
        "../envs/conflux.yaml"
    threads: job_threads("reference_logps_sft_dpo")
    resources:
        **job_resources("reference_logps_sft_dpo"),
    params:
        seeds=job_seeds,
        train=train_params("sft_dpo"),
        batch_size=CFG.reference_batch_size,
    script:
        "../workflow/scripts/reference_logps_dpo.py"


rule sft_dpo:
    input:
        data=pairs_part("train"),
        manifest="results/models/{model}/manifest.json",
        init=per_seed(train_output("sft", "persona_dataset")),
        reference=per_seed("results/reference/{model}/{persona_dataset}/seed{seed}/sft_dpo_train.parquet"),
    output:
        per_seed_dirs(train_output("sft_dpo", "persona_dataset")),
    log:
        per_seed("logs/sft_dpo/{model}/{persona_dataset}/seed{seed}.log"),
    benchmark:
        per_seed_benchmark("benchmarks/sft_dpo/{model}/{persona_dataset}/seed{seed}.tsv")
    conda:
        "../envs/conflux.yaml"
    threads: job_threads("sft_dpo")
    resources:
        **job_resources("sft_dpo"),
    params:
        seeds=job_seeds,
        train=train_params("sft_dpo"),
        work_dir=checkpoint_dir,
        keep_checkpoints=CFG.keep_checkpoints,
    script:
        "../workflow/scripts/train_trl.py"
