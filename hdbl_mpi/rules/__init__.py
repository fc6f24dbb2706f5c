"""The method's rules, pure: no torch, no MPI, no files. Each is plain Python on plain values, unit-tested in
milliseconds and readable in one screen, and each module holds its own choice list, which the config check asks.

- plan.py: the dual-batch plan (d_L, d_S, B_S, f; method §4);
- schedule.py: cyclic progressive schedules (method §5);
- merge.py: how a push is merged into W (method §3), the rule a newcomer changes in one place;
- policy.py: when a push merges and a reply goes out (ASP, BSP, SSP), the kvstore names, the fault-tolerance modes;
- local_steps.py, slowmo.py: LocalSGD's local-step strategies and SlowMo's outer step (method §7);
- backends.py: the data-parallel modes and which library reduces the allreduce baseline's gradients.
"""
