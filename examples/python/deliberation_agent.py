#!/usr/bin/env python3
"""A deliberation worker: the agent of agent.py, answering `deliberation` tasks with a decision.

POST /deliberations makes one task of type `deliberation` (payload: content, decision_type, mode, context, config);
this agent claims it and completes it with {answer, confidence, consensus_reached, reasoning, agent_contributions}.
In an orchestrated deliberation (`"mode": "orchestrated"`) the control plane runs the rounds itself and sends this
agent round tasks instead: `deliberation.propose` (its own position), `deliberation.revise` (payload
`own_position` and the others' `positions`: it keeps its position unless most others hold another) and, when it
registers `judge` too, `deliberation.judge` (all final `positions`: it picks the one most hold).

Without a model it decides deterministically: three "voices" vote yes or no from the SHA-256 of the question, the
majority is the answer, and agreement is the confidence, so tests and demos get the same decision every time.
With --chat-url (env DELIBERATION_CHAT_URL), an OpenAI-compatible chat endpoint such as
https://api.openai.com/v1/chat/completions, and DELIBERATION_API_KEY, each voice asks the model instead (--chat-model,
env DELIBERATION_MODEL) and the voices' answers are compared as given.

    cargo run -p aragora-cp -- serve                      # prints an admin token
    python3 examples/python/deliberation_agent.py --token <that token>
"""

import hashlib
import json
import os
import sys
import urllib.request

from agent import Agent, main, parse_args

VOICES = 3


def deterministic_positions(content):
    """Three yes/no votes read off the question's SHA-256."""
    digest = hashlib.sha256(content.encode()).digest()
    return ["yes" if digest[i] % 2 == 0 else "no" for i in range(VOICES)]


def model_positions(content, decision_type, url, key, model):
    """Each voice asks an OpenAI-compatible chat endpoint; its reply is its position."""
    positions = []
    for voice in range(VOICES):
        body = {
            "model": model,
            "temperature": 0.7,
            "messages": [
                {"role": "system", "content": f"You are voice {voice + 1} of {VOICES} in a {decision_type}. "
                                              "Answer with a decision in one short sentence."},
                {"role": "user", "content": content},
            ],
        }
        request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
        request.add_header("Content-Type", "application/json")
        request.add_header("Authorization", f"Bearer {key}")
        with urllib.request.urlopen(request, timeout=60) as response:
            reply = json.load(response)
        positions.append(reply["choices"][0]["message"]["content"].strip())
    return positions


def round_answer(agent_id, task_type, payload):
    """A round task of an orchestrated deliberation, answered without a model."""
    positions = [str(p.get("answer")) for p in payload.get("positions") or []]
    if task_type == "deliberation.propose":
        # This agent's own voice: one of the deterministic votes, chosen by its id.
        votes = deterministic_positions(str(payload.get("content", "")))
        answer = votes[int(hashlib.sha256(agent_id.encode()).hexdigest(), 16) % len(votes)]
        return {"answer": answer, "confidence": 0.6, "reasoning": f"{agent_id} proposes {answer!r}"}
    if task_type == "deliberation.revise":
        own = str((payload.get("own_position") or {}).get("answer"))
        held = positions + [own]
        leading = max(held, key=held.count)
        answer = leading if held.count(leading) * 2 > len(held) else own
        return {"answer": answer, "confidence": round(held.count(answer) / len(held), 3),
                "reasoning": f"{held.count(answer)} of {len(held)} positions hold {answer!r}"}
    leading = max(positions, key=positions.count) if positions else None
    return {"answer": leading, "consensus_reached": bool(positions) and positions.count(leading) == len(positions),
            "reasoning": f"{positions.count(leading)} of {len(positions)} final positions hold {leading!r}"}


class DeliberationAgent(Agent):
    def result(self, task):
        payload = task.get("payload") or {}
        if task.get("task_type", "").startswith("deliberation."):
            return round_answer(self.agent_id, task["task_type"], payload)
        content = str(payload.get("content", ""))
        decision_type = payload.get("decision_type", "debate")
        if self.args.chat_url:
            positions = model_positions(content, decision_type, self.args.chat_url, self.args.api_key,
                                        self.args.chat_model)
        else:
            positions = deterministic_positions(content)
        answer = max(positions, key=positions.count)
        agreeing = positions.count(answer)
        return {
            "answer": answer,
            "confidence": round(agreeing / len(positions), 3),
            "consensus_reached": agreeing == len(positions),
            "reasoning": f"{agreeing} of {len(positions)} voices answered {answer!r} to this {decision_type}",
            "agent_contributions": [
                {"agent_id": f"{self.agent_id}/voice-{n + 1}", "position": position}
                for n, position in enumerate(positions)
            ],
        }


def extend(parser):
    parser.add_argument("--chat-url", default=os.environ.get("DELIBERATION_CHAT_URL"),
                        help="an OpenAI-compatible chat completions URL (env DELIBERATION_CHAT_URL); "
                             "without it, decisions are deterministic")
    parser.add_argument("--api-key", default=os.environ.get("DELIBERATION_API_KEY", ""),
                        help="the chat endpoint's key (env DELIBERATION_API_KEY)")
    parser.add_argument("--chat-model", default=os.environ.get("DELIBERATION_MODEL", "gpt-4o-mini"),
                        help="the chat model (env DELIBERATION_MODEL)")


if __name__ == "__main__":
    arguments = parse_args(sys.argv[1:], description="A deliberation worker for aragora-cp (standard library only).",
                           capabilities="deliberation", extend=extend)
    sys.exit(main(sys.argv[1:], DeliberationAgent, arguments))
