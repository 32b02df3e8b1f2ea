rule train:
    input:
        arrays=rules.convert.output.arrays,
        samples=rules.convert.output.samples,
        fingerprint=rules.convert.output.fingerprint,
        split=rules.split.output.split,
        plan=rules.augment.output.plan,
    output:
        model="results/{dataset}/{model}/seed{seed}/train/model.pt",
        history=report(
            "results/{dataset}/{model}/seed{seed}/train/history.tsv",
            caption="../report/history.rst",
            category="Training",
            labels={"dataset": "{dataset}", "model": "{model}", "seed": "{seed}"},
        ),
        card="results/{dataset}/{model}/seed{seed}/train/model_card.json",
    log:
        "logs/{dataset}/{model}/seed{seed}/train.log",
    benchmark:
        "benchmarks/{dataset}/{model}/seed{seed}/train.tsv"
    params:
        settings=get_settings("train"),
        # resume checkpoint and TensorBoard logs: not declared outputs, so they survive a failed try
        work_dir="results/{dataset}/{model}/seed{seed}/train",
    threads: 2
    resources:
        mem_mb=16000,
        runtime=240,
    conda:
        "../../envs/torch.yaml"
    script:
        "../scripts/train.py"
