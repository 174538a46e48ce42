"""A gate that opens a memory only for inputs like those it was taught, and keeps it at exactly
zero everywhere else.

A memory added to a pretrained model is read by every token; whatever is written into it is
then read by prompts it was never meant for (``results/knowledge-real/``). A similarity radius
around one key per taught fact cannot fix that on SmolLM2: the prompts of a taught fact's
neighbours (the same relation, other subjects) lie as close to its key as the fact's own prompt
after a passage of text does. A scorer *fitted* against such neighbours and ordinary text opens
for most of the taught facts' unseen phrasings, but also for most prompts of subjects it was not
fitted against; a codebook of every taught phrasing's input (the first position left out) stays
closed for nearly all of those at a cost in unseen phrasings — measured in
``results/gated-memory-probe-real/`` (README, "A codebook of every taught phrasing") and built
here as the gate's keys (below).
The gate is a small MLP scorer on the memory's input, centred by the background's mean input;
the memory's read passes where the score is
positive and is replaced by exact zeros elsewhere, so a closed gate leaves the model's outputs
bit-identical to the model without the memory, and no gradient reaches the values from there.

A new gate is closed for every input (its last layer outputs a negative constant) until
:func:`fit_gate` fits it.

A gate made with room for keys (``MemoryGate(dim, hidden, keys=N)``, ``PKMConfig(gate_keys=N)``)
also keeps a codebook: the inputs it was fitted open at, centred and normalised
(:meth:`MemoryGate.set_keys`); it then opens only where the scorer opens *and* the input's best
cosine to a key reaches the codebook's threshold. The room is fixed when the gate is made, so a
saved gate has the same shapes whatever it holds and loads anywhere.

A sequence's first position needs keys of its own. There the input depends on the token alone (it
attends only to itself) and is the attention sink's, alike for every token, so it neither makes an
ordinary key nor matches one — a taught subject of one token that opens a prompt ("France's capital
is") would never open the codebook. Centred by the mean first-position input of many tokens, though,
first-position inputs are the token's identity: the same token gives a cosine of 1 (to float
rounding, in any prompt or batch), every other token below ``START_KEY_COSINE`` and later positions
far below it (``results/gated-memory-probe-real/first_position.json``). So the gate also holds
*start keys* — the first-position inputs it was fitted open at, centred that way — and opens where
an input matches one of those.

The codebook may read another block's state than the memory's input (``MemoryGate(...,
separate_keys=True)``, ``PKMConfig(gate_key_block=...)``): an early block's FFN input at a subject's
last token is more the subject's own tokens and less the words around it, so a taught subject's
unseen phrasings and the subject after unrelated text lie near its keys while other subjects stay
far (``results/gated-memory-probe-real/key_layers-128.json``). The scorer keeps the memory's input;
the key block's input reaches the gate through a :class:`KeyInput` that a hook on that block fills in
each forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional

#: The score of every input before the gate is fitted: negative, so the gate starts closed.
CLOSED_SCORE = -1.0

#: The cosine from which a first-position input matches a start key: the same token (1 to float
#: rounding) and no other (see the module docstring for the measurement).
START_KEY_COSINE = 0.995


def start_key_room(keys: int) -> int:
    """Room for start keys beside ``keys`` ordinary ones: a taught fact gives about nine ordinary keys
    and at most one start key (its subject's token, where that is a single token)."""
    return max(1, keys // 4) if keys else 0


class KeyInput:
    """The input of the block whose state a gate's codebook reads, as the last forward pass left it:
    a forward pre-hook of that block's FFN (``hook(module, args)``). An object, not a closure, so that
    ``copy.deepcopy`` of a model gives a hook that fills the copy's holder."""

    def __init__(self) -> None:
        self.hidden: torch.Tensor | None = None

    def __call__(self, _module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        # detached: the codebook's decision sends no gradient, and a held graph would outlive its step
        self.hidden = args[0].detach()


class MemoryGate(nn.Module):
    """Per token: is this input one the memory was taught? (``scores(x) > 0``)."""

    def __init__(self, dim: int, hidden: int = 256, keys: int = 0, *, separate_keys: bool = False):
        super().__init__()
        if keys < 0:
            raise ValueError(f"keys must be 0 or more, got {keys}")
        if separate_keys and not keys:
            raise ValueError("separate_keys: a codebook of another block's input needs room for keys")
        self.scorer = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, 1))
        nn.init.zeros_(self.scorer[2].weight)
        nn.init.constant_(self.scorer[2].bias, CLOSED_SCORE)
        #: The background's mean input (subtracted first: the direction every input shares) and
        #: the mean norm of the centred inputs it was fitted on; both saved with the memory.
        self.register_buffer("centre", torch.zeros(dim))
        self.register_buffer("scale", torch.ones(()))
        self.register_buffer("fitted_flag", torch.zeros((), dtype=torch.bool))
        #: Room for keys (0: no codebook; then the buffers below do not exist, as in older gates).
        self.key_room = keys
        if keys:
            #: The codebook: the first ``key_count`` rows, each a centred, normalised input.
            self.register_buffer("keys", torch.zeros(keys, dim))
            self.register_buffer("key_count", torch.zeros((), dtype=torch.long))
            self.register_buffer("key_threshold", torch.ones(()))
            #: Start keys (first-position inputs, centred by ``start_centre``; module docstring).
            self.register_buffer("start_keys", torch.zeros(start_key_room(keys), dim))
            self.register_buffer("start_key_count", torch.zeros((), dtype=torch.long))
            self.register_buffer("start_centre", torch.zeros(dim))
        #: Whether the codebook reads another block's input (``key_hidden``), centred by its own mean.
        self.separate_keys = separate_keys
        if separate_keys:
            self.register_buffer("key_centre", torch.zeros(dim))

    @property
    def fitted(self) -> bool:
        """Whether :func:`fit_gate` has fitted it (an unfitted gate is closed for every input)."""
        return bool(self.fitted_flag)

    @torch.no_grad()
    def close(self) -> None:
        """Closed for every input again, as when new (a memory whose facts were all taken out)."""
        nn.init.zeros_(self.scorer[2].weight)
        nn.init.constant_(self.scorer[2].bias, CLOSED_SCORE)
        self.centre.zero_()
        self.scale.fill_(1.0)
        self.fitted_flag.fill_(False)
        if self.key_room:
            self.keys.zero_()
            self.key_count.zero_()
            self.key_threshold.fill_(1.0)
            self.start_keys.zero_()
            self.start_key_count.zero_()
            self.start_centre.zero_()
        if self.separate_keys:
            self.key_centre.zero_()

    @torch.no_grad()
    def set_keys(
        self,
        inputs: torch.Tensor,
        threshold: float,
        *,
        start: torch.Tensor | None = None,
        start_centre: torch.Tensor | None = None,
        key_centre: torch.Tensor | None = None,
    ) -> None:
        """Keep ``inputs`` (rows of memory inputs, after :func:`fit_gate` set the centre; of the key
        block's inputs for a gate with ``separate_keys``, centred by ``key_centre``, their background
        mean) as the codebook, opening from a cosine of ``threshold``; ``start`` (first-position
        memory inputs, centred by ``start_centre``, the mean first-position input of many tokens) as
        its start keys, each token once. More rows than the room is an error."""
        if not self.key_room:
            raise ValueError("this gate was made without room for keys (keys=0)")
        if self.separate_keys != (key_centre is not None):
            raise ValueError("key_centre: give it exactly for a gate whose codebook reads another block")
        if len(inputs) > self.key_room:
            raise ValueError(f"{len(inputs)} keys do not fit in the gate's room for {self.key_room}")
        if not -1.0 <= threshold <= 1.0:
            raise ValueError(f"a cosine threshold is in [-1, 1], got {threshold}")
        starts = torch.zeros(0, self.keys.shape[1])
        if start is not None and len(start):
            if start_centre is None:
                raise ValueError("start keys need the centre of first-position inputs (start_centre)")
            starts = _distinct(_directions(start.float().cpu(), start_centre.float().cpu()))
            if len(starts) > len(self.start_keys):
                raise ValueError(
                    f"{len(starts)} start keys do not fit in the gate's room for {len(self.start_keys)}"
                )
        if key_centre is not None:
            self.key_centre.copy_(key_centre.to(self.key_centre.device).float())
        self.keys.zero_()
        self.keys[: len(inputs)] = self._key_directions(inputs.to(self.keys.device)).to(self.keys.dtype)
        self.key_count.fill_(len(inputs))
        self.key_threshold.fill_(threshold)
        self.start_keys.zero_()
        self.start_keys[: len(starts)] = starts.to(self.start_keys.device, self.start_keys.dtype)
        self.start_key_count.fill_(len(starts))
        if start_centre is not None:
            self.start_centre.copy_(start_centre.to(self.start_centre.device).float())

    def _directions(self, hidden: torch.Tensor) -> torch.Tensor:
        return _directions(hidden, self.centre)

    def _key_directions(self, hidden: torch.Tensor) -> torch.Tensor:
        return _directions(hidden, self.key_centre if self.separate_keys else self.centre)

    def key_similarity(self, hidden: torch.Tensor) -> torch.Tensor:
        """Each row's best cosine to a key (after centring; rows of the key block's input for a gate
        with ``separate_keys``); -1 where the codebook is empty."""
        count = int(self.key_count) if self.key_room else 0
        if not count:
            return torch.full(hidden.shape[:-1], -1.0, device=hidden.device)
        return (self._key_directions(hidden) @ self.keys[:count].float().T).max(dim=-1).values

    def start_similarity(self, hidden: torch.Tensor) -> torch.Tensor:
        """Each input row's best cosine to a start key (centred as they are); -1 where there is none."""
        count = int(self.start_key_count) if self.key_room else 0
        if not count:
            return torch.full(hidden.shape[:-1], -1.0, device=hidden.device)
        directions = _directions(hidden, self.start_centre)
        return (directions @ self.start_keys[:count].float().T).max(dim=-1).values

    def scores(self, hidden: torch.Tensor) -> torch.Tensor:
        """One score per input row: positive where the gate opens."""
        centred = (hidden - self.centre.to(hidden.dtype)) / self.scale.to(hidden.dtype)
        return self.scorer(centred).squeeze(-1)

    def forward(self, hidden: torch.Tensor, key_hidden: torch.Tensor | None = None) -> torch.Tensor:
        """Where the gate opens, per input row (a boolean mask); ``key_hidden``: the key block's
        input at the same positions, for a gate with ``separate_keys`` (required once it holds keys)."""
        opened = self.scores(hidden) > 0
        if self.key_room and int(self.key_count):
            if self.separate_keys and key_hidden is None:
                raise ValueError("this gate's codebook reads another block's input: pass key_hidden")
            near = self.key_similarity(key_hidden if self.separate_keys else hidden) >= self.key_threshold
            if int(self.start_key_count):
                near = near | (self.start_similarity(hidden) >= START_KEY_COSINE)
            opened = opened & near
        return opened


def _directions(hidden: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
    """Rows centred by ``centre`` and normalised (in float32)."""
    centred = hidden.float() - centre.to(hidden.device).float()
    return centred / centred.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def _distinct(directions: torch.Tensor) -> torch.Tensor:
    """Each direction once: a row is dropped where an earlier one is the same to float rounding (the
    same token's first-position input, read in another prompt)."""
    similar = torch.tril(directions @ directions.T, diagonal=-1) >= START_KEY_COSINE
    return directions[~similar.any(dim=1)]


@dataclass
class GateFit:
    """How a gate fitted its inputs: the share of positives it opens and of negatives it keeps closed."""

    positives: int
    negatives: int
    opened_positives: float
    closed_negatives: float
    final_loss: float


def fit_gate(
    gate: MemoryGate,
    positives: torch.Tensor,
    negatives: torch.Tensor,
    *,
    negative_weights: torch.Tensor | None = None,
    open_share: float | None = None,
    centre: torch.Tensor | None = None,
    steps: int = 1500,
    batch_size: int | None = 4096,
    learning_rate: float = 3e-3,
    weight_decay: float = 1e-4,
    seed: int = 0,
) -> GateFit:
    """Fit ``gate`` to open for ``positives`` and stay closed for ``negatives`` (rows of memory
    inputs), by weighted logistic loss and Adam; ``negative_weights`` weight the hard negatives
    (a taught fact's neighbours) above ordinary text; ``open_share`` (if given) weights the
    positives so that they carry that share of the loss however many of each there are.
    ``centre`` is ordinary text's mean input (default: the negatives' mean). Each step reads
    ``batch_size`` rows drawn at random (every row where there are no more; ``None``: every row),
    so the cost of a fit does not grow with the number of facts. Returns how well it fits."""
    if not len(positives) or not len(negatives):
        raise ValueError("a gate needs positives and negatives to fit")
    generator = torch.Generator().manual_seed(seed)  # on the CPU: the same draws on every device
    device = gate.centre.device
    positives, negatives = positives.to(device), negatives.to(device)
    with torch.no_grad():
        for layer in (gate.scorer[0], gate.scorer[2]):
            bound = 1 / layer.in_features**0.5
            for parameter in (layer.weight, layer.bias):  # drawn on the CPU, copied to the gate's device
                parameter.copy_(torch.empty(parameter.shape).uniform_(-bound, bound, generator=generator))
        gate.centre.copy_(negatives.float().mean(dim=0) if centre is None else centre.to(device).float())
        inputs = torch.cat([positives, negatives]).float()
        gate.scale.copy_((inputs - gate.centre).norm(dim=-1).mean().clamp_min(1e-6))
    targets = torch.cat([torch.ones(len(positives)), torch.zeros(len(negatives))]).to(device)
    closed = negative_weights.float() if negative_weights is not None else torch.ones(len(negatives))
    closed = closed.to(device)
    opened = torch.ones(len(positives), device=device)
    if open_share is not None:
        if not 0.0 < open_share < 1.0:
            raise ValueError(f"open_share must be in (0, 1), got {open_share}")
        opened *= closed.sum() * open_share / (1 - open_share) / len(positives)
    weights = torch.cat([opened, closed])
    optimizer = torch.optim.Adam(gate.scorer.parameters(), lr=learning_rate, weight_decay=weight_decay)
    was_training = gate.training
    gate.train()
    loss = torch.zeros((), device=device)
    full = batch_size is None or batch_size >= len(inputs)
    with torch.enable_grad():
        for _ in range(steps):
            rows = (
                slice(None)
                if full
                else torch.randint(len(inputs), (batch_size,), generator=generator).to(device)
            )
            optimizer.zero_grad()
            loss = functional.binary_cross_entropy_with_logits(
                gate.scores(inputs[rows]), targets[rows], weight=weights[rows]
            )
            loss.backward()
            optimizer.step()
    gate.train(was_training)
    gate.fitted_flag.fill_(True)
    with torch.no_grad():  # the scorer fitted here: a refit's codebook still holds the last fit's keys
        opened = gate.scores(inputs) > 0
    return GateFit(
        positives=len(positives),
        negatives=len(negatives),
        opened_positives=float(opened[: len(positives)].float().mean()),
        closed_negatives=float((~opened[len(positives) :]).float().mean()),
        final_loss=float(loss.detach()),
    )
