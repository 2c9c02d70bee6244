"""DiffusionRet (Jin et al., ICCV 2023): a token-wise (WTI) first stage and a generative second stage, two
relevance generators that re-rank each query's top candidates by DDIM sampling (methods spec §4–§5).

* :mod:`.schedule`: the cosine noise schedule, noising and the DDIM step;
* :mod:`.generator`: the t2v and v2t relevance generators (reference key names);
* :mod:`.sampling`: DDIM sampling and the per-direction re-ranking of a score matrix's rows;
* :mod:`.candidates`: in-batch candidate mining for training;
* :mod:`.losses`: the generation cross-entropies;
* :mod:`.head`: the ``diffusionret`` head (both stages).
"""
