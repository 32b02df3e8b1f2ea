# A checkpoint: when the config leaves `models` unset (or pins a plan file), the models to train are
# known only once plan.json exists, and Snakemake re-evaluates the DAG after this job.
# The results library is read, not declared as an input: new results in it must not re-plan (and so
# retrain) finished datasets. Delete plan.json or use `--forcerun recommend` to plan again.
checkpoint recommend:
    input:
        fingerprint=rules.convert.output.fingerprint,
    output:
        plan="results/{dataset}/recommend/plan.json",
        table=report(
            "results/{dataset}/recommend/plan.tsv",
            caption="../report/recommend.rst",
            category="Recommendation",
            labels={"dataset": "{dataset}"},
        ),
    log:
        "logs/{dataset}/recommend.log",
    conda:
        "../../envs/torch.yaml"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=15,
    params:
        settings=get_settings("recommend"),
    script:
        "../scripts/recommend.py"
