"""Render ``summary.jsonl`` files written by ``analyze.py`` as the markdown table of RESULTS.md.

Run: ``python3 benchmarks/gpu/table.py benchmarks/gpu/logs/2026-11-22-run2/summary.jsonl``
"""

from __future__ import annotations

import json
import sys


def main() -> None:
    print("| phase | backend | K | trials done | most trials running at once | runner pids seen at once in one "
          "nvidia-smi sample | peak MiB per runner | most MiB, all runners | trials/min (first start to last "
          "finish) | trials/min (agent wall) | agent wall s | median trial s | GPU util mean % | CPU busy mean % |")
    print("|" + "---|" * 14)
    for path in sys.argv[1:]:
        for line in open(path):
            s = json.loads(line)
            peaks = ", ".join(f"{v:.0f}" for v in sorted(s.get("peak_mib_per_runner", {}).values())) or "none"
            print(f"| {s['phase']} | {','.join(s['keras_backends'])} | {s['k'] or '-'} | "
                  f"{s['states'].get('COMPLETE', 0)} | {s['max_trials_running_at_once']} | "
                  f"{s.get('most_runner_pids_in_one_sample', '')} | {peaks} | {s.get('max_sum_mib_runners', 0):.0f} | "
                  f"{s['trials_per_min_span']} | {s['trials_per_min_wall']} | {s['agent_wall_s']:.1f} | "
                  f"{s['median_trial_s']:.1f} | {s.get('gpu_util_mean_pct')} | {s.get('cpu_busy_mean_pct', '-')} |")


if __name__ == "__main__":
    main()
