"""Weight analysis rules: task vectors streamed from safetensors, statistics, CL-L2, TIES merges, reverts."""
