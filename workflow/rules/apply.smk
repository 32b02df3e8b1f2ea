# `snakemake apply`: the config's `apply:` entries, each a trained model on a folder of new images
# (snakescope.apply; README "Apply a trained model to new images").
rule apply_model:
    input:
        unpack(get_apply_inputs),
    output:
        results=report(
            directory("results/apply/{application}"),
            patterns=["ranking.png"],
            caption="../report/apply.rst",
            category="Apply",
            labels={"application": "{application}"},
        ),
    log:
        "logs/apply/{application}.log",
    conda:
        "../../envs/torch.yaml"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=120,
    params:
        settings=lambda wildcards: APPLICATIONS[wildcards.application],
    script:
        "../scripts/apply.py"


rule apply:
    input:
        get_apply_targets,
    localrule: True
