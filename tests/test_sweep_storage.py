"""The study's SQLite storage under parallel trial tasks: each enqueued trial runs exactly once."""

import threading
from collections import Counter

import optuna

from smolforge.flows.config import load_config
from smolforge.tasks.sweep.study import default_storage, open_study

SWEEP = "{stage: pretrain, trials: 4, space: {pretrain.optimizer.lr: float 1e-5..3e-2 log}}"


def test_threads_claiming_enqueued_trials_never_claim_the_same_one(tmp_path):
    cfg = load_config("tiny", overrides=[f"sweep={SWEEP}"]).sweep
    url = default_storage(tmp_path)
    study = open_study(cfg, url, "claims")
    for i in range(60):
        study.enqueue_trial({"pretrain.optimizer.lr": 1e-4 + i * 1e-6})
    claimed: Counter[int] = Counter()

    def claim_until_none_left():
        own = open_study(cfg, url, "claims")  # one storage per task, as the sweep's trial tasks have
        while (trial_id := own._pop_waiting_trial_id()) is not None:
            claimed[trial_id] += 1

    workers = [threading.Thread(target=claim_until_none_left) for _ in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert sum(claimed.values()) == 60 and max(claimed.values()) == 1
    assert all(t.state == optuna.trial.TrialState.RUNNING for t in study.get_trials())
