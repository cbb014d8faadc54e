"""Every study and trial attribute key the service writes, named once.

User attrs are what the dashboard shows on a study's or trial's page, so they stay short (one
line each); long texts (the per-epoch history, the model summary, a traceback) are trial
*system* attrs and the trial's dashboard note. Keys that are Optuna's own conventions keep
Optuna's names (``fixed_params`` for an enqueued point; ``failed_trial`` and
``retry_history`` for a retry, as ``RetryHeartbeatStaleTrialCallback`` writes them).
"""

from __future__ import annotations

# ---------------------------------------------------------------------------- study user attrs
SPEC = "spec"  # the validated study spec (JSON)
CODE_HASH = "code_hash"  # SHA-256 of the model source file
READY = "ready"  # set last by `submit`: the study is complete and may be served
ABORTED = "aborted"  # why the study stopped (too many consecutive failures)
CONTROL = "control"  # {"state": "paused" | "stopped", "at": ISO time}: set by `tuner-service pause/stop`
TUNER = "tuner"
SUBMITTED_AT = "submitted_at"
SUBMISSION = "submission"  # a token of the `submit` that created the study (its warm workers wait for it)
RESUMED_AT = "resumed_at"
DATA = "data"  # source, hash, task and split sizes
RETRAIN = "retrain"  # the last retrain's test metrics and model path
KERAS_TUNER = "keras_tuner"  # a study created by tuner_service.keras_tuner
GPU_BUSY_PREFIX = "gpu_busy:"  # + host: nvidia-smi's utilisation of the GPUs the study's runners used there

# ---------------------------------------------------------------------------- trial user attrs
# Written with the claim: who runs the trial, where.
HOST = "host"
PID = "pid"
WORKER = "worker"
SLOT = "slot"
CUDA_VISIBLE_DEVICES = "cuda_visible_devices"
DEVICE = "device"
KERAS_BACKEND = "keras_backend"
STARTED_AT = "started_at_unix"
# Written with the outcome.
PARAM_COUNT = "param_count"
BEST_EPOCH = "best_epoch"
EPOCHS_RUN = "epochs_run"
FIT_SECONDS = "fit_seconds"
TRIAL_SECONDS = "trial_seconds"
FINISHED_AT = "finished_at_unix"
RESUMED_FROM_EPOCH = "resumed_from_epoch"
FAIL_REASON = "fail_reason"  # every FAIL trial has one (the retry's is on the retry too)
# On a retry.
RETRY_OF = "retry_of"
RETRY_REASON = "retry_reason"
CHECKPOINT_DIR = "checkpoint_dir"

# ---------------------------------------------------------------------------- trial system attrs
FIXED_PARAMS = "fixed_params"  # Optuna's enqueue_trial convention: a grid point
FAILED_TRIAL = "failed_trial"  # the first run of a retry chain (Optuna's convention)
RETRY_HISTORY = "retry_history"  # every earlier run of the chain (Optuna's convention)
CRASHES = "crashes"  # runs of this chain that died (counted against MAX_RETRIES)
HAND_BACKS = "hand_backs"  # runs handed back on SIGTERM/SIGINT/drain (never counted)
ERROR_RETRIES = "error_retries"  # keras-tuner's max_retries_per_trial: retries after model errors
CHECKPOINT_EPOCH = "checkpoint_epoch"  # describes one run: not carried to its retry
# Long texts, kept off the dashboard's one-line attribute list.
HISTORY = "history"  # metric -> per-epoch values
MODEL_SUMMARY = "model_summary"
TRACEBACK = "traceback"

#: The long per-trial texts a runner returns as ``Outcome.details``.
DETAIL_KEYS = (HISTORY, MODEL_SUMMARY, TRACEBACK)
