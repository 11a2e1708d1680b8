"""The network simulator (`meshrender sim`): one frame on thousands of virtual peers, in virtual
time from a seed, driving the real `meshrender.schedule` cores (see `sim.engine`). Scenarios are
TOML files (`sim.scenario`; shipped ones in `sim/scenarios/`)."""
