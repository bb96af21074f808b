"""airspeed velocity benchmarks of fastxent (see asv_bench/asv.conf.json)."""
