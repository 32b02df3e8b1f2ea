rule augment:
    input:
        arrays=rules.convert.output.arrays,
        fingerprint=rules.convert.output.fingerprint,
        split=rules.split.output.split,
        recommendation=rules.recommend.output.plan,
    output:
        plan="results/{dataset}/augment/plan.json",
        preview=report(
            "results/{dataset}/augment/preview.png",
            caption="../report/augment.rst",
            category="Augmentation",
            labels={"dataset": "{dataset}"},
        ),
    log:
        "logs/{dataset}/augment.log",
    conda:
        "../../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=15,
    params:
        settings=get_settings("augment"),
    script:
        "../scripts/augment.py"
