"""Make the release-format fixtures of tests/data/; run it with the release's xpmlp (commit c1454b0).

    cd RELEASE_CHECKOUT && PYTHONPATH=$PWD python /path/to/tests/data/make_release_fixture.py OUT_DIR

writes OUT_DIR/release-c1454b0.safetensors (xpmlp.save), release-c1454b0.weights.safetensors
(save_weights) and release-c1454b0.expected.json: what the release reads back from those files.
"""
import json
import sys

import numpy as np

import xpmlp
from xpmlp.optim import Adam
from xpmlp.schedules import StepDecay


def data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(24, 4)) * 3.0 + 1.0, rng.integers(0, 3, size=24)


out = sys.argv[1]
print("xpmlp from", xpmlp.__file__)
X, y = data()
PROBE = np.linspace(-2.0, 4.0, 12).reshape(3, 4)
model = xpmlp.MLP([4, 8, 3], dropout=0.1, standardize=True, seed=0, device="cpu")
model.fit(X, y, loss="softmax_cross_entropy", optimizer=Adam(lr=StepDecay(0.01, step_size=3, gamma=0.5)),
          epochs=2, batch_size=8)
model.save(f"{out}/release-c1454b0.safetensors")
model.save_weights(f"{out}/release-c1454b0.weights.safetensors")

loaded = xpmlp.load(f"{out}/release-c1454b0.safetensors", device="cpu")
opt = loaded.optimizer
fresh = xpmlp.MLP([4, 8, 3], dropout=0.1, standardize=True, seed=1, device="cpu")
fresh.load_weights(f"{out}/release-c1454b0.weights.safetensors")
expected = {
    "probe": PROBE.tolist(),
    "predictions": loaded.predict(PROBE).tolist(),
    "weights_only_predictions": fresh.predict(PROBE).tolist(),
    "optimizer": {"class": type(opt).__name__, "t": opt.t, "lr": opt.current_lr(),
                  # the release keeps one dict per parameter, in parameter order: flattened m and v
                  "state": [{k: np.asarray(v).reshape(-1).tolist() for k, v in s.items()} for s in opt.state]},
    "rng": {"shuffle_next": int(loaded.shuffle_rng.integers(2**63)),
            "init_next": int(loaded._init_rng.integers(2**63))},
    "dropout": [[i, layer.key, layer.counter] for i, layer in enumerate(loaded.layers)
                if isinstance(layer, xpmlp.Dropout)],
}
# resumed training: one more epoch from the file continues the run (schedule, Adam, shuffles, masks)
resumed = xpmlp.load(f"{out}/release-c1454b0.safetensors", device="cpu")
resumed.fit(X, y, epochs=1, batch_size=8)
expected["resumed_predictions"] = resumed.predict(PROBE).tolist()
with open(f"{out}/release-c1454b0.expected.json", "w") as f:
    json.dump(expected, f)
    f.write("\n")
