"""The credit-assignment lab: a task small enough for 2 CPU cores on which the plugin's estimators can be watched
learning, and the tools around it. It imports the plugin (``verl_prpo``); the plugin never imports it.

* :mod:`.task`: chained arithmetic with verifiable steps, a noisy solver, step labels, grading;
* :mod:`.build`: the testbed's assets (tokenizer, SFT policy, trained PRM, verl parquet), pinned or built and cached;
* :mod:`.evaluate`: held-out greedy / sampled accuracy, response length, entropy;
* :mod:`.grid`: every estimator under the same budget through verl's ``main_ppo``: results file, table, curves;
* :mod:`.pilot`: a plain-torch policy-gradient loop on the same task (no verl), for quick checks;
* :mod:`.quickstart`: one CPU-mode training run of the testbed with a summary;
* :mod:`.tiny_assets`, :mod:`.tiny_checkpoints`, :mod:`.toy_reward`: random tiny models, data and a shaped reward
  for the end-to-end plumbing tests.
"""
