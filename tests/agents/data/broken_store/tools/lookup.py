from voicebot.agents import ToolContext, tool


@tool
async def lookup(ctx: ToolContext, query: str) -> str:
    """Look something up.

    Args:
        query: What to look up.
    """
    return query


@tool
async def forbidden(ctx: ToolContext) -> str:
    """Not listed by alpha."""
    return "no"
