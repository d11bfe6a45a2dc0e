#!/usr/bin/env python3
"""Cave of the Lost MID: find the key, open the door, reach the exit before your lamp runs out.

Play:       python3 cave.py               (moves: w a s d, then Enter; q quits)
Scripted:   python3 cave.py --moves ddss  (or VHW_MOVES=ddss): plays the moves, prints each turn
Continue:   python3 cave.py --continue    goes on from the last save on the memory card

On a vhw console the game saves its progress on the memory card when it stops: the console gives
it a save folder in VHW_SAVE_DIR (no such folder: no memory card, the game says it cannot save).
"""

import argparse
import errno
import json
import os
import sys

MAP = [
    "###########",
    "#@....#..k#",
    "#.##.##.#.#",
    "#.#.....#.#",
    "#.#.###.#D#",
    "#...#...#>#",
    "###########",
]
LAMP = 40  # moves before the lamp goes out
STEPS = {"w": (-1, 0), "s": (1, 0), "a": (0, -1), "d": (0, 1)}


class Cave:
    def __init__(self):
        self.grid = [list(row) for row in MAP]
        self.pos = next((r, c) for r, row in enumerate(MAP) for c, ch in enumerate(row) if ch == "@")
        self.grid[self.pos[0]][self.pos[1]] = "."
        self.has_key = False
        self.moves = 0
        self.over = None  # "won" or "lost"

    def state(self):
        return {"grid": ["".join(row) for row in self.grid], "pos": list(self.pos), "has_key": self.has_key,
                "moves": self.moves, "over": self.over}

    @classmethod
    def restore(cls, data):
        cave = cls()
        cave.grid = [list(row) for row in data["grid"]]
        cave.pos = tuple(data["pos"])
        cave.has_key = bool(data["has_key"])
        cave.moves = int(data["moves"])
        cave.over = data.get("over")
        return cave

    def draw(self):
        out = []
        for r, row in enumerate(self.grid):
            out.append("".join("@" if (r, c) == self.pos else ch for c, ch in enumerate(row)))
        out.append(f"lamp {LAMP - self.moves:2d}   key {'yes' if self.has_key else 'no '}")
        return "\n".join(out)

    def move(self, key):
        if key not in STEPS or self.over:
            return "?"
        dr, dc = STEPS[key]
        r, c = self.pos[0] + dr, self.pos[1] + dc
        cell = self.grid[r][c]
        self.moves += 1
        note = ""
        if cell == "#":
            note = "You bump into rock."
        elif cell == "D" and not self.has_key:
            note = "The door is locked."
        else:
            self.pos = (r, c)
            if cell == "k":
                self.has_key = True
                self.grid[r][c] = "."
                note = "You pick up a rusty key."
            elif cell == "D":
                self.grid[r][c] = "."
                note = "The key turns; the door opens."
            elif cell == ">":
                self.over = "won"
                return f"You escaped the cave in {self.moves} moves!"
        if self.moves >= LAMP and not self.over:
            self.over = "lost"
            return "Your lamp goes out. Darkness. GAME OVER"
        return note


SAVE = "cave.sav"
SAVE_ON = os.environ.get("VHW_SAVE_ON", "the memory card")  # or a card-less console's memory


def save_dir():
    return os.environ.get("VHW_SAVE_DIR") or None


def load_game():
    """The saved game from the memory card, or None."""
    folder = save_dir()
    if folder is None:
        print("(no memory card: there is no saved game to continue)")
        return None
    try:
        with open(os.path.join(folder, SAVE)) as f:
            cave = Cave.restore(json.load(f))
    except FileNotFoundError:
        print(f"(no saved game on {SAVE_ON}: a new game)")
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"(the saved game cannot be read: {exc}; a new game)")
        return None
    if cave.over:
        print(f"(the saved game is over: you {cave.over}; a new game)")
        return None
    print(f"(continuing the saved game: {cave.moves} moves made)")
    return cave


def save_game(cave):
    """Keep the game on the memory card: one file, which lands on the card when it is closed."""
    folder = save_dir()
    if folder is None:
        print("(no memory card: your progress is not saved)")
        return
    path = os.path.join(folder, SAVE)
    try:
        with open(path, "w") as f:
            json.dump(cave.state(), f)
        summary = f"{cave.over or 'in progress'}, {cave.moves} moves, key {'yes' if cave.has_key else 'no'}"
        try:  # a few bytes the card manager shows beside the save
            os.setxattr(path, "user.vhw.meta", summary.encode())
        except OSError:
            pass
        print(f"(saved on {SAVE_ON}: {summary})")
    except OSError as exc:
        reason = f"{SAVE_ON} is full" if exc.errno == errno.ENOSPC else exc.strerror
        print(f"(could not save: {reason})")


def main():
    ap = argparse.ArgumentParser(description="Cave of the Lost MID")
    ap.add_argument("--moves", default=os.environ.get("VHW_MOVES"), help="play these moves (w/a/s/d) and stop")
    ap.add_argument("--continue", dest="resume", action="store_true", help="go on from the saved game")
    args = ap.parse_args()
    cave = (load_game() if args.resume else None) or Cave()
    print("CAVE OF THE LOST MID")
    print(cave.draw())
    if args.moves is not None:
        for key in args.moves.lower():
            note = cave.move(key)
            print(f"> {key}  {note}")
            if cave.over:
                break
        else:
            print(cave.draw())
        print(f"result: {cave.over or 'unfinished'} after {cave.moves} moves")
        save_game(cave)
        return 0 if cave.over == "won" else 1
    while not cave.over:
        try:
            line = input("move (w/a/s/d, q) > ").strip().lower()
        except EOFError:
            break
        if line == "q":
            break
        for key in line:
            note = cave.move(key)
            if note:
                print(note)
            if cave.over:
                break
        print(cave.draw())
    print(f"result: {cave.over or 'quit'} after {cave.moves} moves")
    save_game(cave)
    return 0


if __name__ == "__main__":
    sys.exit(main())
