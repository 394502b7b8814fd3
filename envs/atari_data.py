"""Random and human scores of the 57 Atari games, and the human-normalised score.

The numbers are copied exactly from DeepMind's DQN Zoo, ``dqn_zoo/atari_data.py``
(https://github.com/google-deepmind/dqn_zoo, file at commit
359945dcb6f6a04f16e380b210c4f22b57681905, ``_ATARI_DATA``; Apache License 2.0). There, each
score is an undiscounted return averaged over at least 3 episodes that start after 1-30 random
no-ops, with episodes capped at 108,000 frames; "random" picks actions uniformly at random and
"human" is a professional game tester.

Keys are envpool task names without the ``-v5`` suffix (``"Pong"`` is ``Pong-v5``). They are
DQN Zoo's snake_case names with each underscore-separated part capitalised
(``kung_fu_master`` -> ``KungFuMaster``, ``up_n_down`` -> ``UpNDown``, ``jamesbond`` ->
``Jamesbond``), which is how envpool spells all 57.
"""

from __future__ import annotations

# Game: (random score, human score), from DQN Zoo's ``_ATARI_DATA``.
_SCORES: dict[str, tuple[float, float]] = {
    "Alien": (227.8, 7127.7),
    "Amidar": (5.8, 1719.5),
    "Assault": (222.4, 742.0),
    "Asterix": (210.0, 8503.3),
    "Asteroids": (719.1, 47388.7),
    "Atlantis": (12850.0, 29028.1),
    "BankHeist": (14.2, 753.1),
    "BattleZone": (2360.0, 37187.5),
    "BeamRider": (363.9, 16926.5),
    "Berzerk": (123.7, 2630.4),
    "Bowling": (23.1, 160.7),
    "Boxing": (0.1, 12.1),
    "Breakout": (1.7, 30.5),
    "Centipede": (2090.9, 12017.0),
    "ChopperCommand": (811.0, 7387.8),
    "CrazyClimber": (10780.5, 35829.4),
    "Defender": (2874.5, 18688.9),
    "DemonAttack": (152.1, 1971.0),
    "DoubleDunk": (-18.6, -16.4),
    "Enduro": (0.0, 860.5),
    "FishingDerby": (-91.7, -38.7),
    "Freeway": (0.0, 29.6),
    "Frostbite": (65.2, 4334.7),
    "Gopher": (257.6, 2412.5),
    "Gravitar": (173.0, 3351.4),
    "Hero": (1027.0, 30826.4),
    "IceHockey": (-11.2, 0.9),
    "Jamesbond": (29.0, 302.8),
    "Kangaroo": (52.0, 3035.0),
    "Krull": (1598.0, 2665.5),
    "KungFuMaster": (258.5, 22736.3),
    "MontezumaRevenge": (0.0, 4753.3),
    "MsPacman": (307.3, 6951.6),
    "NameThisGame": (2292.3, 8049.0),
    "Phoenix": (761.4, 7242.6),
    "Pitfall": (-229.4, 6463.7),
    "Pong": (-20.7, 14.6),
    "PrivateEye": (24.9, 69571.3),
    "Qbert": (163.9, 13455.0),
    "Riverraid": (1338.5, 17118.0),
    "RoadRunner": (11.5, 7845.0),
    "Robotank": (2.2, 11.9),
    "Seaquest": (68.4, 42054.7),
    "Skiing": (-17098.1, -4336.9),
    "Solaris": (1236.3, 12326.7),
    "SpaceInvaders": (148.0, 1668.7),
    "StarGunner": (664.0, 10250.0),
    "Surround": (-10.0, 6.5),
    "Tennis": (-23.8, -8.3),
    "TimePilot": (3568.0, 5229.2),
    "Tutankham": (11.4, 167.6),
    "UpNDown": (533.4, 11693.2),
    "Venture": (0.0, 1187.5),
    "VideoPinball": (16256.9, 17667.9),
    "WizardOfWor": (563.5, 4756.5),
    "YarsRevenge": (3092.9, 54576.9),
    "Zaxxon": (32.5, 9173.3),
}

ATARI_GAMES: tuple[str, ...] = tuple(sorted(_SCORES))
"""The 57 games, sorted, as envpool task names without ``-v5``."""

RANDOM_SCORES: dict[str, float] = {game: random for game, (random, _) in _SCORES.items()}
"""Score of the uniformly random agent, per game."""

HUMAN_SCORES: dict[str, float] = {game: human for game, (_, human) in _SCORES.items()}
"""Score of the professional human tester, per game."""


MINIMAL_ACTIONS: dict[str, tuple[int, ...]] = {
    "Alien": (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17),
    "Amidar": (0, 1, 2, 3, 4, 5, 10, 11, 12, 13),
    "Assault": (0, 1, 2, 3, 4, 11, 12),
    "Asterix": (0, 2, 3, 4, 5, 6, 7, 8, 9),
    "Asteroids": (0, 1, 2, 3, 4, 5, 6, 7, 10, 11, 12, 13, 14, 15),
    "Atlantis": (0, 1, 11, 12),
    "BankHeist": (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17),
    "BattleZone": (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17),
    "BeamRider": (0, 1, 2, 3, 4, 6, 7, 11, 12),
    "Berzerk": (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17),
    "Bowling": (0, 1, 2, 5, 10, 13),
    "Boxing": (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17),
    "Breakout": (0, 1, 3, 4),
    "Centipede": (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17),
    "ChopperCommand": (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17),
    "CrazyClimber": (0, 2, 3, 4, 5, 6, 7, 8, 9),
    "Defender": (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17),
    "DemonAttack": (0, 1, 3, 4, 11, 12),
    "DoubleDunk": (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17),
    "Enduro": (0, 1, 3, 4, 5, 8, 9, 11, 12),
    "FishingDerby": (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17),
    "Freeway": (0, 2, 5),
    "Frostbite": (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17),
    "Gopher": (0, 1, 2, 3, 4, 10, 11, 12),
    "Gravitar": (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17),
    "Hero": (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17),
    "IceHockey": (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17),
    "Jamesbond": (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17),
    "Kangaroo": (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17),
    "Krull": (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17),
    "KungFuMaster": (0, 2, 3, 4, 5, 8, 9, 11, 12, 13, 14, 15, 16, 17),
    "MontezumaRevenge": (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17),
    "MsPacman": (0, 2, 3, 4, 5, 6, 7, 8, 9),
    "NameThisGame": (0, 1, 3, 4, 11, 12),
    "Phoenix": (0, 1, 3, 4, 5, 11, 12, 13),
    "Pitfall": (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17),
    "Pong": (0, 1, 3, 4, 11, 12),
    "PrivateEye": (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17),
    "Qbert": (0, 1, 2, 3, 4, 5),
    "Riverraid": (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17),
    "RoadRunner": (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17),
    "Robotank": (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17),
    "Seaquest": (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17),
    "Skiing": (0, 3, 4),
    "Solaris": (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17),
    "SpaceInvaders": (0, 1, 3, 4, 11, 12),
    "StarGunner": (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17),
    "Surround": (0, 2, 3, 4, 5),
    "Tennis": (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17),
    "TimePilot": (0, 1, 2, 3, 4, 5, 10, 11, 12, 13),
    "Tutankham": (0, 2, 3, 4, 5, 10, 11, 12),
    "UpNDown": (0, 1, 2, 5, 10, 13),
    "Venture": (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17),
    "VideoPinball": (0, 1, 2, 3, 4, 5, 10, 11, 12),
    "WizardOfWor": (0, 1, 2, 3, 4, 5, 10, 11, 12, 13),
    "YarsRevenge": (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17),
    "Zaxxon": (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17),
}
"""Each game's minimal action set as ALE action ids among the 18 (ale-py 0.12's
``getMinimalActionSet``, copied here because loading 57 ROMs takes seconds; a test re-derives
it). ``--action-set minimal`` masks the policy head's other actions."""


def human_normalized_score(game: str, score: float) -> float:
    """Human-normalised score: ``(score - random) / (human - random)``.

    0 is random play and 1 is human play; a NaN score gives NaN. An unknown game raises
    :class:`ValueError`.
    """
    if game not in _SCORES:
        raise ValueError(f"unknown Atari game {game!r}; expected one of {', '.join(ATARI_GAMES)}")
    random, human = _SCORES[game]
    return (score - random) / (human - random)
