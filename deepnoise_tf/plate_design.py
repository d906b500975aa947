"""The plate design, learned from labelled wells: the siRNA groups and the order the plates follow.

RxRx1 (docs/method.md §1, §8) puts the 1108 treatment siRNAs into 4 disjoint groups of 277, one group
per plate, and the groups follow each other over an experiment's plates 1-4 in one cyclic order, each
experiment starting somewhere else in it. Nothing here assumes which siRNAs form a group, how the
groups are numbered or in which order they follow each other: all of it is learned from the labelled
training plates (`learn_plate_design`), and an unlabelled experiment's assignment of groups to plates
is then the candidate that best explains its predictions (`infer_assignment`). When the labelled
plates show no consistent design, the `PlateDesign` says why (`problem`) and post-processing runs
over all siRNAs on every plate instead of restricting to a wrong group.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import scipy.sparse
import scipy.sparse.csgraph
import scipy.special

from deepnoise_tf.constants import NUM_SIRNAS


@dataclasses.dataclass(frozen=True, eq=False)
class PlateDesign:
    """Which siRNAs can be on a plate, as learned from labelled plates.

    Attributes:
      sirna_groups: int ``[num_sirnas]``, the group of each treatment siRNA (numbered 0, 1, ... in the
        order of their smallest member; the numbering carries no meaning); -1 for siRNAs on no
        labelled plate.
      assignments: int ``[num_assignments, num_plates]``, the candidate assignments of groups to
        plates: row r, column p - 1 is the group of plate p. For a cyclic order, row r starts with
        group r. Empty (0 rows) when the design is not consistent.
      problem: why the labelled plates show no consistent design; "" when they do.
    """

    sirna_groups: np.ndarray
    assignments: np.ndarray
    problem: str = ""

    def __post_init__(self):
        for name in ("sirna_groups", "assignments"):
            array = np.array(getattr(self, name), dtype=np.int64)  # a copy nobody else holds
            array.setflags(write=False)
            object.__setattr__(self, name, array)
        if self.assignments.ndim != 2:
            raise ValueError(
                f"assignments must be [assignments, plates], got {self.assignments.shape}"
            )
        if self.consistent and len(self.assignments) == 0:
            raise ValueError("a consistent design needs at least one candidate assignment")

    @property
    def consistent(self) -> bool:
        """Whether the plates can be restricted to groups (else post-processing uses all siRNAs)."""
        return not self.problem

    @property
    def num_groups(self) -> int:
        return int(self.sirna_groups.max(initial=-1)) + 1

    @property
    def num_plates(self) -> int:
        return self.assignments.shape[1]

    def candidate_mask(self, group: int, num_classes: int | None = None) -> np.ndarray:
        """Boolean ``[num_classes]``: the siRNAs of ``group``; columns past the table (controls) False."""
        num_classes = len(self.sirna_groups) if num_classes is None else num_classes
        mask = np.zeros(num_classes, dtype=bool)
        width = min(num_classes, len(self.sirna_groups))
        mask[:width] = self.sirna_groups[:width] == group
        return mask

    def describe(self) -> str:
        """One line for logs: the groups and their order, or why there is no consistent design."""
        if not self.consistent:
            return f"no consistent plate design ({self.problem}): every plate keeps all siRNAs"
        sizes = sorted(set(np.bincount(self.sirna_groups[self.sirna_groups >= 0]).tolist()))
        plates = " -> ".join(str(group) for group in self.assignments[0])
        return (
            f"{self.num_groups} siRNA groups of {'/'.join(map(str, sizes))} siRNAs; plates "
            f"1-{self.num_plates} hold groups {plates} or one of the other "
            f"{len(self.assignments) - 1} candidate assignments (rotations)"
        )


# --------------------------------------------------------------------------------------------
# Groups


def sirna_groups_from_labels(
    experiments: Sequence[Hashable] | np.ndarray,
    plates: Sequence[int] | np.ndarray,
    sirnas: Sequence[int] | np.ndarray,
    num_sirnas: int = NUM_SIRNAS,
) -> np.ndarray:
    """The group of every treatment siRNA, derived from labelled wells.

    Two siRNAs are in the same group when they share a plate (transitively: connected components of
    the siRNA-plate graph). Labels outside ``0..num_sirnas-1`` (controls, ``UNKNOWN_LABEL``) are
    ignored, so all wells of a table can be passed.

    Args:
      experiments, plates, sirnas: one entry per labelled well.
      num_sirnas: number of treatment classes.

    Returns:
      int array ``[num_sirnas]``: groups numbered 0, 1, ... in the order of their smallest member;
      -1 for siRNAs that occur on no plate.
    """
    experiments = np.asarray(experiments)
    plates = np.asarray(plates)
    sirnas = np.asarray(sirnas, dtype=np.int64)
    if not (len(experiments) == len(plates) == len(sirnas)):
        raise ValueError("experiments, plates and sirnas must have the same length")
    groups = np.full(num_sirnas, -1, dtype=np.int64)
    treatment = (sirnas >= 0) & (sirnas < num_sirnas)
    if not treatment.any():
        return groups
    sirnas = sirnas[treatment]
    plate_keys = np.array(
        [f"{e}\x00{p}" for e, p in zip(experiments[treatment], plates[treatment], strict=True)]
    )
    _, plate_index = np.unique(plate_keys, return_inverse=True)
    num_plates = int(plate_index.max()) + 1
    # Bipartite graph: nodes 0..num_sirnas-1 are siRNAs, the rest plates.
    graph = scipy.sparse.coo_matrix(
        (np.ones(len(sirnas)), (sirnas, num_sirnas + plate_index)),
        shape=(num_sirnas + num_plates,) * 2,
    )
    _, component = scipy.sparse.csgraph.connected_components(graph, directed=False)
    seen = np.zeros(num_sirnas, dtype=bool)
    seen[sirnas] = True
    sirna_component = component[:num_sirnas]
    # siRNA ids ascend, so the first occurrence of a component is its smallest member.
    _, first = np.unique(sirna_component[seen], return_index=True)
    order = np.argsort(first)  # component ranks by smallest member
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    component_ids = np.unique(sirna_component[seen])
    lookup = dict(zip(component_ids.tolist(), rank.tolist(), strict=True))
    groups[seen] = [lookup[c] for c in sirna_component[seen].tolist()]
    return groups


# --------------------------------------------------------------------------------------------
# The order of the groups over the plates


def rotations(group_order: Sequence[int], num_plates: int) -> np.ndarray:
    """The plate->group assignments of a cyclic group order: ``[len(group_order), num_plates]``.

    Row r starts with ``group_order[r]`` on plate 1 and walks the order (wrapping around) over the
    following plates. ``rotations(range(4), 4)`` is the RxRx1 rule ``(g1 + p - 1) mod 4``.
    """
    group_order = np.asarray(group_order, dtype=np.int64)
    steps = np.arange(len(group_order))[:, None] + np.arange(num_plates)[None, :]
    return group_order[steps % len(group_order)]


def cyclic_design(
    sirna_groups: np.ndarray, group_order: Sequence[int], num_plates: int
) -> PlateDesign:
    """A consistent design whose plates follow the rotations of ``group_order``, rows sorted so that
    row g puts group g on plate 1."""
    table = rotations(group_order, num_plates)
    return PlateDesign(sirna_groups, table[np.argsort(table[:, 0])])


def _plate_groups(experiments, plates, sirnas, groups) -> dict[Hashable, dict[int, int]]:
    """``{experiment: {plate: group}}`` of the labelled plates (a plate's siRNAs share one group)."""
    layout: dict[Hashable, dict[int, int]] = {}
    rows = zip(experiments.tolist(), plates.tolist(), sirnas.tolist(), strict=True)
    for experiment, plate, sirna in rows:
        layout.setdefault(experiment, {})[int(plate)] = int(groups[sirna])
    return layout


def _group_order(layout: dict, num_groups: int) -> tuple[list[int], str]:
    """``(order, problem)``: the cyclic order of the groups implied by consecutive labelled plates.

    Plates p and p + 1 of one experiment say which group follows which. Those links must agree
    everywhere and chain all groups into one cycle; a single chain missing its closing link is closed
    (the order repeats over the plates).
    """
    successor: dict[int, int] = {}
    predecessor: dict[int, int] = {}
    for experiment, plate_groups in layout.items():
        for plate, group in plate_groups.items():
            following = plate_groups.get(plate + 1)
            if following is None:
                continue
            if successor.setdefault(group, following) != following:
                return [], (
                    f"group {group} is followed by groups {successor[group]} and {following} "
                    f"(experiment {experiment!r}, plate {plate})"
                )
            if predecessor.setdefault(following, group) != group:
                return [], (
                    f"groups {predecessor[following]} and {group} are both followed by group "
                    f"{following} (experiment {experiment!r}, plate {plate})"
                )
    heads = [group for group in range(num_groups) if group not in predecessor]
    start = heads[0] if heads else 0
    order = [start]
    while successor.get(order[-1], start) != start:
        order.append(successor[order[-1]])
    if len(order) != num_groups or len(heads) > 1:
        return [], (
            f"consecutive labelled plates link {len(successor)} of the {num_groups} steps between "
            f"groups into no single order: fewer labelled plates than needed"
        )
    return order, ""


def learn_plate_design(
    experiments: Sequence[Hashable] | np.ndarray,
    plates: Sequence[int] | np.ndarray,
    sirnas: Sequence[int] | np.ndarray,
    num_sirnas: int = NUM_SIRNAS,
) -> PlateDesign:
    """The plate design of labelled wells: groups, their order over plates 1..P and its rotations.

    Learned, not assumed (docs/method.md §8): the groups are the connected siRNA-plate components
    (`sirna_groups_from_labels`); which group follows which comes from consecutive plates of the
    same experiment; the candidate assignments are the rotations of that order over the plates
    (P = the highest labelled plate number). The design is not consistent (``problem`` says why, and
    a warning is issued) when a group holds more siRNAs than any plate has wells (groups that are
    not disjoint), when the links disagree or leave the order open, or when an experiment's plates
    follow no rotation.

    Args:
      experiments, plates, sirnas: one entry per well; labels outside ``0..num_sirnas-1``
        (controls, unknown) are ignored.
      num_sirnas: number of treatment classes.
    """
    experiments, plates = np.asarray(experiments), np.asarray(plates, dtype=np.int64)
    sirnas = np.asarray(sirnas, dtype=np.int64)
    groups = sirna_groups_from_labels(experiments, plates, sirnas, num_sirnas)
    treatment = (sirnas >= 0) & (sirnas < num_sirnas)
    if (plates[treatment] < 1).any():
        raise ValueError("plates are numbered from 1")
    experiments, plates, sirnas = experiments[treatment], plates[treatment], sirnas[treatment]
    if not len(sirnas):
        return _inconsistent(groups, 0, "no labelled treatment well")
    num_plates = int(plates.max())
    _, wells_per_plate = np.unique(
        np.array([f"{e}\x00{p}" for e, p in zip(experiments, plates, strict=True)]),
        return_counts=True,
    )
    group_sizes = np.bincount(groups[groups >= 0])
    if group_sizes.max() > wells_per_plate.max():
        return _inconsistent(
            groups,
            num_plates,
            f"a group of {group_sizes.max()} siRNAs is larger than any plate "
            f"({wells_per_plate.max()} labelled wells): the plates' siRNA sets overlap, the groups "
            "are not disjoint",
        )
    layout = _plate_groups(experiments, plates, sirnas, groups)
    order, problem = _group_order(layout, len(group_sizes))
    if problem:
        return _inconsistent(groups, num_plates, problem)
    design = cyclic_design(groups, order, num_plates)
    for experiment, plate_groups in layout.items():
        columns = np.array(sorted(plate_groups)) - 1
        wanted = np.array([plate_groups[plate] for plate in sorted(plate_groups)])
        if not (design.assignments[:, columns] == wanted).all(axis=1).any():
            return _inconsistent(
                groups,
                num_plates,
                f"experiment {experiment!r} puts groups {plate_groups} on its plates, "
                f"which no rotation of {order} does",
            )
    return design


def _inconsistent(groups: np.ndarray, num_plates: int, problem: str) -> PlateDesign:
    warnings.warn(
        f"no consistent plate design in the labelled plates: {problem}; the plate prior "
        "will not restrict plates to groups",
        UserWarning,
        stacklevel=3,
    )
    return PlateDesign(groups, np.zeros((0, num_plates), dtype=np.int64), problem)


# --------------------------------------------------------------------------------------------
# An unlabelled experiment's assignment


def plate_group_log_likelihood(log_probs: np.ndarray, sirna_groups: np.ndarray) -> np.ndarray:
    """Summed over wells, log P(well's siRNA is in group g): array ``[num_groups]``.

    Columns without a group (controls, unseen siRNAs) are left out and the rows renormalised over
    the grouped columns, so each entry is a log-likelihood of the plate holding that group; logits
    give the same result as log-probabilities (per-well shifts cancel).
    """
    num_groups = int(np.max(sirna_groups)) + 1
    log_probs = np.asarray(log_probs, dtype=np.float64)[:, : len(sirna_groups)]
    sirna_groups = np.asarray(sirna_groups)[: log_probs.shape[1]]  # logits may stop early
    per_group = np.stack(
        [
            scipy.special.logsumexp(log_probs[:, sirna_groups == group], axis=1)
            for group in range(num_groups)
        ],
        axis=1,
    )
    per_group = per_group - scipy.special.logsumexp(per_group, axis=1, keepdims=True)
    return per_group.sum(axis=0)


def infer_assignment(
    design: PlateDesign,
    logits_per_plate: Mapping[int, np.ndarray] | Sequence[np.ndarray],
) -> tuple[int, dict[int, int]]:
    """Which of the design's candidate assignments best explains an experiment's predictions.

    Each candidate is scored by the summed log-probability, over all wells of all given plates, that
    a well's siRNA lies in the group the candidate puts on its plate (`plate_group_log_likelihood`);
    the best one wins (ties: lowest row). Missing plates are fine.

    Args:
      design: a consistent `PlateDesign`.
      logits_per_plate: ``{plate (1-based): [wells, classes] logits}`` (or log-probabilities); a
        sequence means plates 1, 2, ...

    Returns:
      ``(row, {plate: group})``: the winning row of ``design.assignments`` and the group it puts on
      each given plate.
    """
    if not design.consistent:
        raise ValueError(f"no assignment to infer: {design.problem}")
    if not isinstance(logits_per_plate, Mapping):
        logits_per_plate = {i + 1: logits for i, logits in enumerate(logits_per_plate)}
    plates = sorted(int(p) for p in logits_per_plate)
    if plates[0] < 1 or plates[-1] > design.num_plates:
        raise ValueError(f"plates {plates} outside the learned plates 1..{design.num_plates}")
    scores = np.zeros(len(design.assignments))
    for plate in plates:
        per_group = plate_group_log_likelihood(logits_per_plate[plate], design.sirna_groups)
        scores += per_group[design.assignments[:, plate - 1]]
    best = int(np.argmax(scores))
    return best, {plate: int(design.assignments[best, plate - 1]) for plate in plates}
