"""Small knowledge graphs shipped as YAML (organs, findings, locations, descriptors and their relations)."""

from sonodistill.knowledge.graph import (
    Entity,
    KnowledgeGraph,
    MaskPlan,
    Mention,
    available_graphs,
    entity_aware_mask,
    load_graph,
)

__all__ = ["Entity", "KnowledgeGraph", "MaskPlan", "Mention", "available_graphs", "entity_aware_mask", "load_graph"]
