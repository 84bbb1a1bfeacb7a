"""Heads: per-head attribution of each method's update and of ICL (`attribution`), Dai et al.'s Kendall measure
(`kendall`), attention patterns (`patterns`) and Todd et al.'s function vectors (`function_vectors`)."""
