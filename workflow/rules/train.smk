rule train:
    input:
        arrays=rules.convert.output.arrays,
        samples=rules.convert.output.samples,
        fingerprint=rules.convert.output.fingerprint,
        split=rules.split.output.split,
        plan=rules.augment.output.plan,
        recommendation=rules.recommend.output.plan,
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
    # The only rule that is resubmitted after a failure: a train job killed by a time limit,
    # preemption or scancel resumes from checkpoint_last.pt, so a retry costs one epoch at most.
    # Other rules fail at once (profiles set no global retries): they are short and deterministic,
    # so their failures are real errors (bad input) that a retry would only repeat.
    # 0 inside a cluster job (remote mode): the submitting snakemake resubmits the job, and a rule's
    # retries would otherwise also apply in the job itself (it ignores the `--retries 0` that
    # cluster executors pass), retrying 3 times within each of the 3 submissions.
    retries: 0 if workflow.remote_exec else 2
    conda:
        "../../envs/torch.yaml"
    threads: 2
    resources:
        mem_mb=16000,
        runtime=240,
        gpu=get_train_gpus,
        # train_processes > 1: one SLURM task (and GPU) per process, started by srun from within the
        # job (the executor plugin's `mpi` launch; snakescope.engine.distributed), the job's threads
        # shared between them. Unset for one process.
        tasks=if_distributed(lambda w, threads: get_train_processes(w)),
        tasks_per_gpu=if_distributed(lambda w, threads: 1),
        cpus_per_task=if_distributed(
            lambda w, threads: max(1, threads // get_train_processes(w))
        ),
        mpi=if_distributed(lambda w, threads: "srun"),
    params:
        settings=get_settings("train"),
        # resume checkpoint and TensorBoard logs: not declared outputs, so they survive a failed try
        work_dir="results/{dataset}/{model}/seed{seed}/train",
    script:
        "../scripts/train.py"
