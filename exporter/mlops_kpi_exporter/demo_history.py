"""The demo's month of history, written through MLflow's own client: runs of five experiments
(estimators, machines, statuses, business metrics, artifacts, system metrics), a tuning sweep and a
crashed run, runs on a shared cluster, GenAI traces, and registered models with aliases."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

DAY_MS = 86_400_000
HOUR_MS = 3_600_000

# experiment -> (estimators, instance types, instance counts, typical run hours (low, high), runs)
PROJECTS = {"churn": "churn-prediction", "fraud": "fraud", "recsys": "recommendations", "demand": "supply-chain"}
EXPERIMENTS = {
    "churn-training": (["LogisticRegression", "RandomForestClassifier", "XGBClassifier"], ["m5.xlarge", "c5.2xlarge"], [1], (0.1, 0.8), 70),
    "churn-tuning": (["XGBClassifier", "LGBMClassifier"], ["c5.4xlarge", "m5.4xlarge"], [1, 2, 4], (1.0, 4.0), 30),
    "fraud-detection": (["IsolationForest", "XGBClassifier", "MLPClassifier"], ["g4dn.xlarge", "n1-standard-8"], [1], (0.3, 2.0), 45),
    "recsys-embeddings": (["TwoTowerTransformer", "MatrixFactorization"], ["p3.2xlarge", "Standard_NC6s_v3", "onprem-a100"], [1, 2], (2.0, 8.0), 20),
    "demand-forecast": (["Prophet", "LGBMRegressor"], ["m5.2xlarge"], [1], (0.2, 1.0), 35),
}
STATUSES = ["FINISHED"] * 17 + ["FAILED"] * 2 + ["KILLED"]


def _start_ms(rng: random.Random, now_ms: int) -> int:
    """A start within the last 30 days: mostly office hours, some nightly scheduled jobs."""
    day = now_ms - rng.randint(1, 29) * DAY_MS
    midnight = day - day % DAY_MS
    hour = rng.choice([2, 3]) if rng.random() < 0.2 else rng.choice([8, 9, 9, 10, 10, 11, 13, 14, 14, 15, 16, 17, 19])
    return midnight + hour * HOUR_MS + rng.randint(0, HOUR_MS - 1)


def seed(tracking_uri: str, artifact_root: Path | None, now_ms: int, rng_seed: int = 7) -> int:
    """Write the demo history; artifact_root None leaves artifacts to the tracking server's store."""
    import tempfile

    from mlflow.tracking import MlflowClient

    rng = random.Random(rng_seed)
    client = MlflowClient(tracking_uri=tracking_uri)
    scratch = Path(tempfile.mkdtemp(prefix="mlops-demo-"))
    if artifact_root is not None:
        artifact_root.mkdir(parents=True, exist_ok=True)
    total = 0
    finished: dict[str, list[tuple[int, str]]] = {"churn-training": [], "fraud-detection": []}
    for name, (estimators, machines, counts, (low, high), n_runs) in EXPERIMENTS.items():
        location = (artifact_root / name).resolve().as_uri() if artifact_root is not None else None
        exp_id = client.create_experiment(name, artifact_location=location)
        for i in range(n_runs):
            start = _start_ms(rng, now_ms)
            hours = rng.uniform(low, high)
            status = rng.choice(STATUSES)
            if status != "FINISHED":
                hours *= rng.uniform(0.1, 0.7)  # failures and kills end early
            end = min(start + int(hours * HOUR_MS), now_ms - 60_000)
            estimator = rng.choice(estimators)
            team = name.split("-")[0]
            tags = {"estimator": estimator, "instance_type": machines[i % len(machines)], "team": team}
            if rng.random() < 0.9:  # some runs forget the project tag: they show as "untagged"
                tags["project"] = PROJECTS[team]
            count = rng.choice(counts)
            if count > 1:
                tags["instance_count"] = str(count)
            if name == "demand-forecast" and i % 7 == 0:
                tags["mlops.hourly_cost"] = "0.45"  # a platform that knows its own rate tags the run
            run = client.create_run(exp_id, start_time=start, tags=tags, run_name=f"{name}-{i:03d}")
            metrics = {"accuracy": round(rng.uniform(0.78, 0.95), 4), "training_hours": round(hours, 3)}
            if status == "FINISHED":
                metrics.update(BUSINESS_METRICS.get(name, lambda r: {})(rng))
            _log(client, run.info.run_id, metrics, {"estimator": estimator, "max_depth": str(rng.randint(3, 12))}, end)
            if i % 3 == 0:
                _log_artifact(client, run.info.run_id, scratch, rng)
            if i % 4 == 2 and name in SYSTEM_PROFILES:  # its own random stream: the rest of the demo stays as it was
                _log_system_metrics(client, run.info.run_id, start, end, SYSTEM_PROFILES[name],
                                    random.Random(f"{name}-{i}"), gpus=machines[i % len(machines)] in GPU_MACHINES)
            client.set_terminated(run.info.run_id, status, end_time=end)
            if status == "FINISHED" and name in ("churn-training", "fraud-detection"):
                finished[name].append((end, run.info.run_id))
            total += 1
    # One run still burning money: a GPU job started 40 minutes ago.
    exp = client.get_experiment_by_name("recsys-embeddings")
    live = client.create_run(
        exp.experiment_id,
        start_time=now_ms - 40 * 60_000,
        tags={"estimator": "TwoTowerTransformer", "instance_type": "p3.2xlarge", "instance_count": "2"},
        run_name="recsys-embeddings-nightly-retrain",
    )
    _log_system_metrics(client, live.info.run_id, now_ms - 40 * 60_000, now_ms - 60_000, SYSTEM_PROFILES["recsys-embeddings"],
                        random.Random("live"), gpus=True)
    total += 1
    total += _sweep_and_crash(client, now_ms)
    total += _shared_cluster(client, now_ms)
    _genai_traces(tracking_uri, now_ms)
    _register(client, "churn-classifier", sorted(finished["churn-training"])[-3:], {"champion": 2, "challenger": 3})
    _register(client, "fraud-detector", sorted(finished["fraud-detection"])[-2:], {"champion": 2})
    shutil.rmtree(scratch, ignore_errors=True)
    return total


def _sweep_and_crash(client, now_ms: int) -> int:
    """The two shapes of real data that cost figures must get right (README: "Runs as they really ran").

    A hyper-parameter sweep two days ago: a parent on one c5.4xlarge for two hours and four 29-minute
    trials as child runs, the launcher copying the parent's machine tag to each (costed once, 1.36).
    A GPU run killed ten days ago an hour after its last metric, left RUNNING in MLflow: STALE,
    costed to its last sign of life (one hour), not to now."""
    tuning = client.get_experiment_by_name("churn-tuning").experiment_id
    start = now_ms - 2 * DAY_MS
    machine = {"instance_type": "c5.4xlarge", "team": "churn", "project": PROJECTS["churn"]}
    parent = client.create_run(tuning, start_time=start, tags={**machine, "estimator": "XGBClassifier"},
                               run_name="churn-tuning-sweep").info.run_id
    for trial in range(4):
        t0 = start + trial * HOUR_MS // 2
        child = client.create_run(tuning, start_time=t0, run_name=f"churn-tuning-sweep-trial-{trial}",
                                  tags={**machine, "estimator": "XGBClassifier"}).info.run_id
        client.set_tag(child, "mlflow.parentRunId", parent)
        t1 = t0 + 29 * 60_000  # ends before the parent does: no two runs end at the same moment
        _log(client, child, {"accuracy": 0.86 + trial / 100}, {"max_depth": str(4 + trial)}, t1)
        client.set_terminated(child, "FINISHED", end_time=t1)
    _log(client, parent, {"best_accuracy": 0.89}, {"trials": "4"}, start + 2 * HOUR_MS)
    client.set_terminated(parent, "FINISHED", end_time=start + 2 * HOUR_MS)
    recsys = client.get_experiment_by_name("recsys-embeddings").experiment_id
    crashed_at = now_ms - 10 * DAY_MS
    crashed = client.create_run(recsys, start_time=crashed_at - HOUR_MS, run_name="recsys-embeddings-crashed",
                                tags={"estimator": "TwoTowerTransformer", "instance_type": "p3.2xlarge",
                                      "team": "recsys", "project": PROJECTS["recsys"]}).info.run_id
    _log(client, crashed, {"loss": 0.42}, {"epochs": "50"}, crashed_at)
    return 6


# MLflow system metrics (log_system_metrics) of some runs: (GPU utilization %, CPU utilization %) around
# which each run's curve moves. A well-fed GPU job, a starved one (its data loader cannot keep up), a
# CPU job; the idle share of their cost follows.
SYSTEM_PROFILES = {"recsys-embeddings": (88, 35), "fraud-detection": (22, 60), "demand-forecast": (None, 40)}
GPU_MACHINES = {"p3.2xlarge", "g4dn.xlarge", "Standard_NC6s_v3", "onprem-a100"}


def _log_system_metrics(client, run_id: str, start: int, end: int, profile: tuple, rng: random.Random,
                        gpus: bool) -> None:
    """A point every 5 minutes (MLflow's monitor logs every 10 s; fewer points keep the demo small)."""
    from mlflow.entities import Metric

    gpu_level, cpu_level = profile
    metrics, step = [], 0
    for at in range(start, max(start + 1, end), 5 * 60_000):
        ramp = min(1.0, (at - start) / (10 * 60_000))  # the first minutes load data
        cpu = cpu_level * (0.5 + 0.5 * ramp) + rng.uniform(-5, 5)
        metrics.append(Metric("system/cpu_utilization_percentage", round(max(0.0, cpu), 1), at, step))
        if gpus and gpu_level is not None:
            gpu = gpu_level * ramp + rng.uniform(-8, 8)
            metrics.append(Metric("system/gpu_0_utilization_percentage", round(min(100.0, max(0.0, gpu)), 1), at, step))
            metrics.append(Metric("system/gpu_0_memory_usage_percentage", round(30 + 40 * ramp, 1), at, step))
        step += 1
    for i in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[i:i + 1000])


# A GenAI app (a support assistant) with a month of traces over four models: two hosted ones MLflow
# prices itself, a self-hosted one priced from the config (traces.token_prices) and a lab model with no
# price (counted unpriced); some errors.
GENAI_EXPERIMENT = "support-assistant"
GENAI_MODELS = (("gpt-4o-mini", "openai", 0.6), ("claude-sonnet-4-5", "anthropic", 0.25), ("llama-3-8b-internal", None, 0.12),
                ("mistral-7b-lab", None, 0.03))  # the last one nobody priced: its tokens count, never a guessed cost
GENAI_TRACES = 120


def _genai_traces(tracking_uri: str, now_ms: int) -> None:
    """Traces written through MLflow's tracing API with their own times, offline: MLflow prices LLM
    spans as it stores them, from its bundled catalog when the download of a fresher one is off."""
    import os

    os.environ.setdefault("MLFLOW_MODEL_CATALOG_URI", "")  # no download: nothing leaves the machine
    os.environ["MLFLOW_ENABLE_ASYNC_TRACE_LOGGING"] = "false"
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    rng = random.Random("genai")
    exp_id = mlflow.MlflowClient(tracking_uri).create_experiment(GENAI_EXPERIMENT)
    for i in range(GENAI_TRACES):
        start_ms = now_ms - 30 * DAY_MS + i * (30 * DAY_MS // GENAI_TRACES) + rng.randrange(3_600_000)
        start_ms = min(start_ms, now_ms - 120_000)
        model, provider, _ = rng.choices(GENAI_MODELS, weights=[m[2] for m in GENAI_MODELS])[0]
        user = rng.choice(("alice", "bob", "carol", "dan"))
        root = mlflow.start_span_no_context("answer", span_type="AGENT", experiment_id=exp_id,
                                            start_time_ns=start_ms * 1_000_000,
                                            metadata={"mlflow.trace.user": user, "mlflow.trace.session": f"{user}-{i // 5}"})
        at = start_ms + rng.randrange(50, 300)
        for step in range(rng.choice((1, 1, 2))):  # a retrieval round trip now and then: two LLM calls
            prompt, answer = rng.randrange(2000, 12000), rng.randrange(150, 900)  # retrieved context in the prompt
            usage = {"input_tokens": prompt, "output_tokens": answer, "total_tokens": prompt + answer}
            if provider and rng.random() < 0.4:
                usage["cache_read_input_tokens"] = prompt // 2
            span = mlflow.start_span_no_context(f"llm-{step}", span_type="LLM", parent_span=root,
                                                start_time_ns=at * 1_000_000)
            span.set_attribute("mlflow.chat.tokenUsage", usage)
            span.set_attribute("mlflow.llm.model", model)
            if provider:
                span.set_attribute("mlflow.llm.provider", provider)
            at += int(answer * rng.uniform(8, 20))  # ms per output token
            span.end(end_time_ns=at * 1_000_000)
        root.end(status="ERROR" if rng.random() < 0.05 else "OK", end_time_ns=(at + rng.randrange(20, 200)) * 1_000_000)


def _shared_cluster(client, now_ms: int) -> int:
    """Three forecasting runs on one Databricks-style cluster three days ago, with gaps between them:
    MLflow tags each with the cluster id, the bill tags the cluster's machines with it (demo_bill), so
    the join splits the cluster's hours between the runs and shows the gaps as idle cost."""
    from mlops_kpi_exporter.demo_bill import CLUSTER_ID, CLUSTER_RUNS, cluster_window

    demand = client.get_experiment_by_name("demand-forecast").experiment_id
    up, _ = cluster_window(now_ms)
    for i, (start_min, end_min) in enumerate(CLUSTER_RUNS):
        run = client.create_run(demand, start_time=up + start_min * 60_000, run_name=f"demand-forecast-cluster-{i}",
                                tags={"estimator": "LGBMRegressor", "instance_type": "m5.2xlarge", "instance_count": "4",
                                      "team": "demand", "project": PROJECTS["demand"],
                                      "mlflow.databricks.cluster.id": CLUSTER_ID}).info.run_id
        _log(client, run, {"accuracy": 0.9}, {"store_group": str(i)}, up + end_min * 60_000)
        client.set_terminated(run, "FINISHED", end_time=up + end_min * 60_000)
    return len(CLUSTER_RUNS)


def _log(client, run_id: str, metrics: dict[str, float], params: dict[str, str], at_ms: int) -> None:
    from mlflow.entities import Metric, Param

    client.log_batch(
        run_id,
        metrics=[Metric(k, v, at_ms, 0) for k, v in metrics.items()],
        params=[Param(k, v) for k, v in params.items()],
    )


BUSINESS_METRICS = {
    "churn-training": lambda rng: {"customer_retention_lift": round(rng.uniform(0.06, 0.15), 4)},
    "churn-tuning": lambda rng: {"customer_retention_lift": round(rng.uniform(0.05, 0.16), 4)},
    "fraud-detection": lambda rng: {"false_positive_rate": round(rng.uniform(0.02, 0.09), 4)},
    "recsys-embeddings": lambda rng: {"click_through_rate": round(rng.uniform(0.025, 0.05), 4)},
}


def _log_artifact(client, run_id: str, root: Path, rng: random.Random) -> None:
    """A small model summary file, so artifact storage has real bytes to list."""
    path = root / f"summary-{run_id[:8]}.json"
    path.write_text('{"weights": "' + "x" * rng.randint(2_000, 200_000) + '"}')
    client.log_artifact(run_id, str(path), "model")
    path.unlink()


def _register(client, model: str, runs: list[tuple[int, str]], aliases: dict[str, int]) -> None:
    client.create_registered_model(model, description=f"Demo: {model}")
    for _, run_id in runs:
        run = client.get_run(run_id)
        client.create_model_version(model, f"{run.info.artifact_uri}/model", run_id=run_id)
    for alias, version in aliases.items():
        if version <= len(runs):
            client.set_registered_model_alias(model, alias, str(version))
