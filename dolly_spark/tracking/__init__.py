"""Everything that writes to MLflow, and only the commands layer imports it.

- ``experiments``: point MLflow at the project's store and create the experiment;
- ``runs``: the run around every job (config as params, git commit, engine, nesting), reaping
  runs of dead processes;
- ``metrics``: metrics and artifacts a job logs into its run;
- ``lineage``: gold@version as the run's dataset input, and the lineage tags (data, method, base);
- ``methods``: how a train run fine-tuned (full, lora, qlora): its params, counts and model form;
- ``models``: the Dolly pyfunc logged into the train run (a saved model, or a LoRA adapter);
- ``registry``: registering a run's model under an alias, tagging versions;
- ``gate``: the evaluation gate on the alias (candidate vs alias holder on a pinned eval set).

Where the store is (read-only) is ``dolly_spark.ops.mlflow_store``; resolving an alias is
``dolly_spark.serve.model_uri``.
"""
