#!/usr/bin/env python3
"""Cave of the Lost MID: find the key, open the door, reach the exit before your lamp runs out.

Play:       python3 cave.py               (moves: w a s d, then Enter; q quits)
Scripted:   python3 cave.py --moves ddss  (or VHW_MOVES=ddss): plays the moves, prints each turn
"""

import argparse
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


def main():
    ap = argparse.ArgumentParser(description="Cave of the Lost MID")
    ap.add_argument("--moves", default=os.environ.get("VHW_MOVES"), help="play these moves (w/a/s/d) and stop")
    args = ap.parse_args()
    cave = Cave()
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
